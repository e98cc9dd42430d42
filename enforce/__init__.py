"""agentsh.enforce: the policy model and engine, and one module per enforcement layer.

This package never imports bashlex or prompt_toolkit (dependencies point shell -> enforce).
"""

VERSION = "0.1.0"
