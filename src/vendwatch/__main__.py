from vendwatch.cli.main import main

main()
