from stylesearch.cli.main import main

main()
