import sys

from huma.cli import main

sys.exit(main())
