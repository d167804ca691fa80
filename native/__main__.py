from . import build
import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "build":
        print(build(force="--force" in sys.argv))
