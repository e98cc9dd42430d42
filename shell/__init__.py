"""agentsh.shell: the bash-compatible frontend, the parser, the precheck and the CLI."""
