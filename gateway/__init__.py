"""sipgw: a SIP/telephony event gateway for CTI."""

__version__ = "0.1.0"
