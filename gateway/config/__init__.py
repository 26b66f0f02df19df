"""Settings: a TOML file plus ``SIPGW_*`` environment overrides, and the SIP peer profiles.

``load_settings()`` returns a frozen, fully checked ``Settings`` or raises ``ConfigError``
naming the offending key. See docs/configuration.md for every key.
"""

from gateway.config.errors import ConfigError
from gateway.config.loader import CONFIG_ENV, DEFAULT_PROFILES_DIR, load_settings
from gateway.config.model import (
    DEFAULT_TLS_CIPHERS,
    AutoAnswer,
    DialSettings,
    Did,
    EventsSettings,
    HttpSettings,
    ListenSpec,
    LogSettings,
    MonitorSettings,
    MonitorSource,
    NodeSettings,
    Profile,
    ProfileKind,
    Recognition,
    RecognitionSettings,
    RedisSettings,
    ScreenPop,
    SecuritySettings,
    Settings,
    SipSettings,
    Tenant,
    Transport,
    Trunk,
    User,
    UserRole,
    WebhookSettings,
    WebSettings,
)
from gateway.config.profiles import load_profiles
from gateway.config.reader import parse_env_value

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_PROFILES_DIR",
    "DEFAULT_TLS_CIPHERS",
    "AutoAnswer",
    "ConfigError",
    "DialSettings",
    "Did",
    "EventsSettings",
    "HttpSettings",
    "ListenSpec",
    "LogSettings",
    "MonitorSettings",
    "MonitorSource",
    "NodeSettings",
    "Profile",
    "ProfileKind",
    "Recognition",
    "RecognitionSettings",
    "RedisSettings",
    "ScreenPop",
    "SecuritySettings",
    "Settings",
    "SipSettings",
    "Tenant",
    "Transport",
    "Trunk",
    "User",
    "UserRole",
    "WebSettings",
    "WebhookSettings",
    "load_profiles",
    "load_settings",
    "parse_env_value",
]
