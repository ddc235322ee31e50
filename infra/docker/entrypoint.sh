#!/bin/sh
# Start JupyterLab (default), train from a spec file (the agent), or run any command.
set -eu

case "${1:-lab}" in
  lab)
    shift || true
    # No token is baked into the image: Jupyter generates one and prints the
    # URL, or the operator passes --IdentityProvider.token=... at run time.
    exec jupyter lab --ip=0.0.0.0 --port="${JUPYTER_PORT:-8888}" --no-browser \
      --ServerApp.root_dir="${HOME}/work" "$@"
    ;;
  agent)
    shift
    # The run spec is mounted at /etc/gaudi-nb/spec.json (a ConfigMap on Kubernetes).
    exec gaudi-nb train --spec-file "${GAUDI_NB_SPEC:-/etc/gaudi-nb/spec.json}" --json "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
