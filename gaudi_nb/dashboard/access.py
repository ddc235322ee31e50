"""Who is asking a served view, and what they may do: a login mapped to a team role (no Panel here:
the JupyterLab server extension asks the same questions).

viewer: reads; member: stops their own runs (a run's owner is the login name, which on a team store
is the person's database role); admin: stops anything and takes machines down. Without a login (a
dashboard on loopback for its own user) the person is whoever the store's connection is.
"""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from ..errors import SpecError
from ..team import ROLES, Identity

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
USER_KEYS = ("user", "login", "username", "preferred_username", "email", "name")  # what OAuth providers call the person
GROUP_KEYS = ("orgs", "organizations", "groups", "teams")  # what they call the groups they are in, when they say


def load_roles(path: Optional[str]) -> Dict[str, str]:
    """`--roles FILE`: a JSON object {login: viewer|member|admin}; anyone not in it is a viewer."""
    if not path:
        return {}
    try:
        roles = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"--roles {path}: {exc}: give a JSON file like {{\"alice\": \"member\", \"dana\": \"admin\"}}") from None
    bad = {k: v for k, v in (roles.items() if isinstance(roles, dict) else [("", roles)]) if v not in ROLES}
    if bad:
        raise SpecError(f"--roles {path}: {bad}: each login maps to one of {', '.join(ROLES)}")
    return {str(k): str(v) for k, v in roles.items()}


def is_loopback(address: str) -> bool:
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_oauth(address: str, oauth_provider: Optional[str], allow: Optional[Iterable[str]]) -> None:
    """OAuth lets in anyone the provider knows (every GitHub account): off loopback it needs an allow-list."""
    if oauth_provider and not list(allow or []) and not is_loopback(address):
        raise SpecError(f"--oauth-provider {oauth_provider} on {address} would let in anyone with an account there: "
                        "add --oauth-allow USER (or org:NAME) for each person or organisation, or serve on 127.0.0.1")


def allowed(allow: Iterable[str], user_info: Optional[Mapping[str, Any]]) -> bool:
    """Whether an OAuth login is on the allow-list: a user by any of its names, or `org:NAME` for a group the provider reports."""
    info = dict(user_info or {})
    names = {str(info[k]).lower() for k in USER_KEYS if info.get(k)}
    groups = set()
    for key in GROUP_KEYS:
        value = info.get(key) or []
        groups |= {str(g.get("login") or g.get("name") if isinstance(g, dict) else g).lower() for g in (value if isinstance(value, list) else [value])}
    for entry in allow:
        entry = entry.strip().lower()
        if entry.startswith("org:") and entry[4:] in groups or entry in names:
            return True
    return False


def person(login: Optional[str], roles: Mapping[str, str], store_identity: Identity) -> Identity:
    """The person a session acts for: a login with its role from `roles` (a viewer when not listed), or
    without a login the store's own identity (SQLite: its one user, who may do everything)."""
    if not login:
        return store_identity
    return Identity(login, roles.get(login, "viewer"), True)
