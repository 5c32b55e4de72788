"""``python -m facedefense``: the CLI, also under launchers (``accelerate launch -m facedefense protect ...``)."""

from facedefense.cli import main

if __name__ == "__main__":
    main()
