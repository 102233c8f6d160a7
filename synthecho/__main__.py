from synthecho.cli import main

main()
