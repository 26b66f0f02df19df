"""sipgw: a SIP/telephony event gateway for CTI."""

from gateway.native import install as _install_native

__version__ = "0.1.0"

# Before any other module of the package: the compiled SIP core, if built and fresh.
_install_native()
