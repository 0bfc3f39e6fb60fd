import sys

from passerelle.cli import main

sys.exit(main())
