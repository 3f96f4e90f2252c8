"""Operator imports: device lists (CSV, YAML) and unclaimed devices become declarations, in three written forms.

One job per module: :mod:`.lists` (values, problems, levels and merging them into declarations, what every
source shares), :mod:`.sources` (YAML and CSV device lists, claimed unclaimed devices), :mod:`.verify` (the
result checked against the YANG and planned, as ``pnp-service check`` checks a file) and :mod:`.output` (a
declarations file, new or merged; a ``clixon_cli`` script; a NETCONF ``edit-config`` body).  Pure: text in, text
or bytes out; reading and writing files is the command line's job.  This package's names are its API.
"""

from __future__ import annotations

from .lists import Groups, ImportFailed, Imported, Problem, Where
from .output import (Merged, Untypable, cli_value, clixon_cli_script, declarations_document, declarations_fragment,
                     merge_into, netconf_config)
from .sources import claimed, devices_from_csv, devices_from_yaml, load_groups
from .verify import verify

__all__ = ["Groups", "ImportFailed", "Imported", "Merged", "Problem", "Untypable", "Where", "claimed", "cli_value",
           "clixon_cli_script", "declarations_document", "declarations_fragment", "devices_from_csv",
           "devices_from_yaml", "load_groups", "merge_into", "netconf_config", "verify"]
