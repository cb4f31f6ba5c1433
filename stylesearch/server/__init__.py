"""HTTP frontend: a FastAPI app over the same library functions as the CLI, plus a static page.

`config.py` (settings, bind safety; no heavy imports), `state.py` (warm Searchers rebuilt when
their files change, one engine thread), `errors.py` (library errors as JSON + status codes),
`queries.py` (search requests), `routes.py` / `labels.py` (endpoints), `app.py` (the app and
`serve`). FastAPI and uvicorn are imported only here, never by the CLI's other commands.
"""
