"""pnp-service: Day-0 provisioning of Cisco devices over PnP from a YANG controller.

Layers, arrows pointing down: edges (service module, Flask app, command line)
-> stores and provisioner -> planner -> protocol.
"""

__version__ = "0.2.0"
