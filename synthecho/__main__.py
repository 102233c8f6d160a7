from synthecho.cli import main

# Guarded: worker processes started with "spawn" (synthecho.parallel) import this module again.
if __name__ == "__main__":
    main()
