"""The command lines (thin entry points over the packages) and the scripts that run before
the environment exists (install/, device/: standard library only, importable as tools.install
and tools.device)."""
