#!/bin/sh
# Provision a gateway: a thin wrapper around `gateway provision` (see provisioning/README.md).
#
#   provisioning/provision.sh --root /mnt/image --store-id s-0042 --gateway-id gw-0042-a \
#       --broker mqtts://mqtt.example.net:8883 --ca store-ca.pem --layout s-0042.toml \
#       --tech-user tech --tech-password-file tech.pw --command-pubkey platform-command.pub
#
# It runs the Python implementation of the release it ships with, so the script and the code that
# validates the config are always the same version.
set -eu
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
top=$(dirname -- "$here")
if [ -n "${GATEWAY_PYTHON:-}" ]; then
    py=$GATEWAY_PYTHON
elif [ -x "$top/bin/python" ]; then          # inside an installed release (/opt/gateway/<version>)
    py="$top/bin/python"
elif [ -x "$top/.venv/bin/python" ]; then    # a source checkout with its venv
    py="$top/.venv/bin/python"
else
    py=python3
fi
PYTHONPATH="$top${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m gateway provision "$@"
