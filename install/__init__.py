"""agentsh.install: install-shell / uninstall-shell / status, atomic and reversible."""
