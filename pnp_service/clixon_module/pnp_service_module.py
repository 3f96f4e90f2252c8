"""pnp-service, as a clixon_server.py service module.

Copy this file (only this one) into the clixon-pyapi modules path
(default /usr/local/share/controller/modules); install.sh --controller does.
The code lives in the pnp_service package, which must be installed into the
Python that runs clixon_server.py.
"""

from pnp_service.service_module import SERVICE, SERVICE_NAMESPACES, SERVICE_XPATH, setup  # noqa: F401
