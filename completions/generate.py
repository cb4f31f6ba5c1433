"""Regenerate the shipped shell completion scripts from the CLI: python completions/generate.py"""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

for shell in ("bash", "zsh", "fish"):
    env = {**os.environ, "_STYLESEARCH_COMPLETE": f"source_{shell}"}
    script = subprocess.run([sys.executable, "-c", "from stylesearch.cli.main import main; main()"],
                            capture_output=True, text=True, env=env, check=True).stdout
    (HERE / f"stylesearch.{shell}").write_text(script)
    print(f"wrote {HERE / f'stylesearch.{shell}'}")
