import sys

from pifarm.appliance.cli import main

sys.exit(main())
