#!/usr/bin/env bash
# Host packages for the vm tier. Filled in by the VM harness; as root it apt-get installs them.
exit 0
