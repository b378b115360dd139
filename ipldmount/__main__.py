import sys

from ipldmount.cli import main

sys.exit(main())
