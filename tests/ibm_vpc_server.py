"""A local IBM Cloud VPC API server (stdlib http.server in a thread) answering the calls gaudi_nb's IBM provider makes.

Written from IBM's published VPC API reference (https://cloud.ibm.com/apidocs/vpc/latest) and the
request/response models of the ibm-vpc SDK (ibm_vpc/vpc_v1.py): the same paths under /v1, the
required `version` and `generation=2` query parameters, `{"errors": [{code, message}]}` bodies,
`limit`/`start` pagination with `next.href`, 201 on create and 204 on delete. State lives in
memory; every request is recorded (method, path, query, body) so tests can check what was sent.
Instances go pending -> running after `start_delay`, stopping -> stopped, and deleting -> gone
after `delete_delay`, computed from the clock on each request.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import itertools
import json
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlencode, urlsplit

GAUDI3 = "gx3d-160x1792x8gaudi3"
NAME_RE = re.compile(r"^-?([a-z]|[a-z][-a-z0-9]*[a-z0-9]|[0-9][-a-z0-9]*([a-z]|[-a-z][-a-z0-9]*[a-z0-9]))$")
VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PROTOCOLS = {"any", "all", "tcp", "udp", "icmp", "icmp_tcp_udp"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require(body: Dict[str, Any], *fields: str, where: str = "") -> None:
    for field in fields:
        if body.get(field) in (None, "", [], {}):
            raise ApiError(400, "missing_field", f"{where}{field} is required")


def _ref(body: Dict[str, Any], field: str) -> str:
    """The id a reference ({"id": ...}) names; a reference by name or crn is not used by the provider."""
    value = body.get(field)
    if not isinstance(value, dict) or not value.get("id"):
        raise ApiError(400, "missing_field", f"{field}.id is required")
    return value["id"]


class IbmVpcServer:
    """One region of the VPC API: `url` is what VPC_URL takes."""

    def __init__(self, region: str = "us-east", start_delay: float = 0.3, delete_delay: float = 0.3, page_size: int = 50,
                 api_keys: Optional[List[str]] = None) -> None:
        self.region = region
        # With api_keys, the server is also IAM (POST /identity/token trades a key for a bearer
        # token) and every VPC call needs `Authorization: Bearer <token>`, as the real pair does.
        self.api_keys = set(api_keys or [])
        self.tokens: set = set()
        self.start_delay = start_delay
        self.delete_delay = delete_delay
        self.page_size = page_size
        self.lock = threading.RLock()
        # Bound now, so every href the server hands out carries its real port.
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._httpd.server_address[1]
        self._thread: Optional[threading.Thread] = None
        self.requests: List[Dict[str, Any]] = []
        # (method, path) -> (status, code, message): the next such request fails so, once.
        self.failures: Dict[Tuple[str, str], Tuple[int, str, str]] = {}
        self._addresses = itertools.count(10)
        zones = [f"{region}-{i}" for i in (1, 2, 3)]
        # IBM lists the zones that support each profile; the Gaudi 3 profile is not in every zone.
        self.profiles: Dict[str, Dict[str, Any]] = {
            GAUDI3: self._profile(GAUDI3, zones[1:], vcpu=160, memory=1792, gpus=8, model="Gaudi 3", maker="Intel"),
            "bx2-2x8": self._profile("bx2-2x8", zones, vcpu=2, memory=8),
        }
        self.images: Dict[str, Dict[str, Any]] = {}
        for name, arch, created in (
            ("ibm-ubuntu-22-04-5-minimal-amd64-2", "amd64", "2025-01-10T00:00:00Z"),
            ("ibm-ubuntu-22-04-5-minimal-amd64-3", "amd64", "2025-06-10T00:00:00Z"),
            ("gaudi3-os-u22-01-20-0", "amd64", "2025-03-01T00:00:00Z"),
            ("gaudi3-os-u22-01-21-0", "amd64", "2025-07-01T00:00:00Z"),
            ("ibm-ubuntu-22-04-5-minimal-s390x-1", "s390x", "2025-08-01T00:00:00Z"),
        ):
            image_id = f"r014-{uuid.uuid4()}"
            self.images[image_id] = {
                "id": image_id, "name": name, "status": "available", "visibility": "public", "created_at": created,
                "href": self._href(f"/images/{image_id}"), "resource_type": "image",
                "operating_system": {"architecture": arch, "name": name.rsplit("-", 1)[0]},
            }
        self.keys: Dict[str, Dict[str, Any]] = {}
        self.vpcs: Dict[str, Dict[str, Any]] = {}
        self.subnets: Dict[str, Dict[str, Any]] = {}
        self.security_groups: Dict[str, Dict[str, Any]] = {}
        self.instances: Dict[str, Dict[str, Any]] = {}
        self.floating_ips: Dict[str, Dict[str, Any]] = {}
        self.add_vpc("default-vpc", {zones[0]: "10.240.0.0/24", zones[1]: "10.240.64.0/24"})

    # ---- set-up helpers for tests ---------------------------------------------------

    def _href(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/v1{path}"

    def _profile(self, name: str, zones: List[str], vcpu: int, memory: int, gpus: int = 0, model: str = "", maker: str = "") -> Dict[str, Any]:
        profile: Dict[str, Any] = {
            "name": name, "family": "gpu" if gpus else "balanced", "resource_type": "instance_profile",
            "href": f"/instance/profiles/{name}", "status": "current",
            "vcpu_count": {"type": "fixed", "value": vcpu}, "memory": {"type": "fixed", "value": memory},
            "os_architecture": {"type": "enum", "default": "amd64", "values": ["amd64"]},
            # This server offers spot for the small profile only, so both answers can be tested.
            "availability_class": {"type": "fixed", "value": "standard"} if gpus
            else {"type": "enum", "default": "standard", "values": ["spot", "standard"]},
            "zones": [{"name": z} for z in zones],
        }
        if gpus:
            profile.update(gpu_count={"type": "fixed", "value": gpus}, gpu_model={"type": "enum", "values": [model]},
                           gpu_manufacturer={"type": "enum", "values": [maker]})
        return profile

    def add_vpc(self, name: str, subnets: Dict[str, str]) -> Dict[str, Any]:
        vpc_id = f"r014-{uuid.uuid4()}"
        vpc = {"id": vpc_id, "name": name, "status": "available", "created_at": _now(), "resource_type": "vpc",
               "crn": f"crn:v1:bluemix:public:is:{self.region}:a/test::vpc:{vpc_id}"}
        self.vpcs[vpc_id] = vpc
        # The VPC's default security group, as IBM creates one with every VPC.
        default_group = self._new_group(vpc, f"{name}-default", [])
        vpc["default_security_group"] = {"id": default_group["id"], "name": default_group["name"]}
        for zone, cidr in subnets.items():
            subnet_id = f"0757-{uuid.uuid4()}"
            self.subnets[subnet_id] = {
                "id": subnet_id, "name": f"{name}-{zone}", "ipv4_cidr_block": cidr, "status": "available",
                "available_ipv4_address_count": ipaddress.ip_network(cidr).num_addresses - 5,
                "total_ipv4_address_count": ipaddress.ip_network(cidr).num_addresses,
                "zone": {"name": zone}, "vpc": {"id": vpc_id, "name": name}, "created_at": _now(), "resource_type": "subnet",
            }
        return vpc

    # ---- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "IbmVpcServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if parts.path == "/identity/token":
                    status, payload = server.token(self.command, raw)
                else:
                    status, payload = server.handle(self.command, parts.path, query, raw, self.headers.get("Authorization", ""))
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        return Handler

    def fail_next(self, method: str, path: str, status: int = 500, code: str = "internal_error", message: str = "injected failure") -> None:
        """Make the next `method path` request fail (a test of what the client does then)."""
        self.failures[(method, path)] = (status, code, message)

    def bodies(self, method: str, path: str) -> List[Dict[str, Any]]:
        """The JSON bodies received for one method and path (path without /v1 and query)."""
        return [r["body"] for r in self.requests if r["method"] == method and r["path"] == path]

    # ---- dispatch -----------------------------------------------------------------------

    def token(self, method: str, raw: bytes) -> Tuple[int, Any]:
        """IAM's token operation (https://cloud.ibm.com/apidocs/iam-identity-token-api#gettoken-apikey)."""
        form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        with self.lock:
            self.requests.append({"method": method, "path": "/identity/token", "query": {}, "body": {"grant_type": form.get("grant_type")}})
        if method != "POST" or form.get("grant_type") != "urn:ibm:params:oauth:grant-type:apikey":
            return 400, {"errorCode": "BXNIM0109E", "errorMessage": "Property missing or empty. Operation not allowed."}
        if form.get("apikey") not in self.api_keys:
            return 400, {"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found."}
        now = int(time.time())

        def part(data: Dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

        # A JWT the SDK can read its expiry from (it does not check IAM's signature).
        access = f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part({'iat': now, 'exp': now + 3600, 'sub': 'gaudi-nb-test'})}.c2ln"
        with self.lock:
            self.tokens.add(access)
        return 200, {"access_token": access, "refresh_token": "not-used", "token_type": "Bearer", "expires_in": 3600, "expiration": now + 3600}

    def handle(self, method: str, path: str, query: Dict[str, str], raw: bytes, authorization: str = "") -> Tuple[int, Any]:
        trace = str(uuid.uuid4())
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, {"errors": [{"code": "bad_request", "message": "the request body is not JSON"}], "trace": trace}
        with self.lock:
            self.requests.append({"method": method, "path": path[3:] if path.startswith("/v1") else path, "query": query, "body": body})
            try:
                if not path.startswith("/v1/"):
                    raise ApiError(404, "not_found", f"{path} is not an API path")
                if self.api_keys and authorization.removeprefix("Bearer ") not in self.tokens:
                    raise ApiError(401, "not_authorized", "the request is not authorized: a valid IAM bearer token is required")
                if not VERSION_RE.match(query.get("version", "")):
                    raise ApiError(400, "missing_version", "the version query parameter (YYYY-MM-DD) is required")
                if query.get("generation") != "2":
                    raise ApiError(400, "bad_generation", "generation=2 is required for VPC infrastructure")
                if method in ("POST", "PATCH") and not isinstance(body, dict):
                    raise ApiError(400, "bad_request", "a JSON object body is required")
                injected = self.failures.pop((method, path[3:]), None)
                if injected:
                    raise ApiError(*injected)
                self._tick()
                return self._route(method, path[3:], query, body or {})
            except ApiError as exc:
                return exc.status, {"errors": [{"code": exc.code, "message": exc.message,
                                                "more_info": "https://cloud.ibm.com/docs/vpc?topic=vpc-rias-error-messages"}],
                                    "trace": trace}

    def _route(self, method: str, path: str, query: Dict[str, str], body: Dict[str, Any]) -> Tuple[int, Any]:
        segments = path.strip("/").split("/")
        routes = {
            ("GET", "instance/profiles"): lambda: self._list("profiles", list(self.profiles.values()), query, path),
            ("GET", "instance/profiles/*"): lambda: (200, self._get(self.profiles, segments[2], "instance profile")),
            ("GET", "images"): lambda: self._list("images", self._filter(self.images, query, {"name": "name", "visibility": "visibility", "status": "status"}), query, path),
            ("GET", "images/*"): lambda: (200, self._get(self.images, segments[1], "image")),
            ("GET", "keys"): lambda: self._list("keys", list(self.keys.values()), query, path),
            ("POST", "keys"): lambda: self._create_key(body),
            ("GET", "keys/*"): lambda: (200, self._get(self.keys, segments[1], "key")),
            ("DELETE", "keys/*"): lambda: self._delete(self.keys, segments[1], "key"),
            ("GET", "vpcs"): lambda: self._list("vpcs", list(self.vpcs.values()), query, path),
            ("GET", "subnets"): lambda: self._list("subnets", self._filter(self.subnets, query, {"vpc.id": "vpc.id", "zone.name": "zone.name"}), query, path),
            ("GET", "security_groups"): lambda: self._list("security_groups", [self._group_view(g) for g in self._filter(self.security_groups, query, {"vpc.id": "vpc.id"})], query, path),
            ("POST", "security_groups"): lambda: self._create_group(body),
            ("GET", "security_groups/*"): lambda: (200, self._group_view(self._get(self.security_groups, segments[1], "security group"))),
            ("DELETE", "security_groups/*"): lambda: self._delete_group(segments[1]),
            ("POST", "security_groups/*/rules"): lambda: self._create_rule(segments[1], body),
            ("GET", "instances"): lambda: self._list("instances", self._filter(self.instances, query, {"name": "name", "vpc.id": "vpc.id"}), query, path),
            ("POST", "instances"): lambda: self._create_instance(body),
            ("GET", "instances/*"): lambda: (200, self._get(self.instances, segments[1], "instance")),
            ("DELETE", "instances/*"): lambda: self._delete_instance(segments[1]),
            ("POST", "instances/*/actions"): lambda: self._instance_action(segments[1], body),
            ("GET", "instances/*/initialization"): lambda: (200, self._get(self.instances, segments[1], "instance")["_initialization"]),
            ("GET", "floating_ips"): lambda: self._list("floating_ips", self._filter(self.floating_ips, query, {"target.id": "target.id"}), query, path),
            ("POST", "floating_ips"): lambda: self._create_floating_ip(body),
            ("GET", "floating_ips/*"): lambda: (200, self._get(self.floating_ips, segments[1], "floating IP")),
            ("DELETE", "floating_ips/*"): lambda: self._delete(self.floating_ips, segments[1], "floating IP"),
        }
        # Ids sit at every other segment (instances/ID/actions); /instance/profiles/NAME is one deeper.
        offset = 1 if segments[0] == "instance" else 0
        shape = "/".join("*" if i >= offset and (i - offset) % 2 else s for i, s in enumerate(segments))
        handler = routes.get((method, shape))
        if handler is None:
            raise ApiError(404, "not_found", f"{method} {path} is not implemented by this server")
        status, payload = handler()
        return status, _public(payload)

    # ---- generic collection helpers -------------------------------------------------

    def _list(self, key: str, items: List[Dict[str, Any]], query: Dict[str, str], path: str) -> Tuple[int, Any]:
        limit = min(int(query.get("limit", self.page_size)), self.page_size)
        start = int(query.get("start", 0) or 0)
        page = items[start:start + limit]
        result: Dict[str, Any] = {key: page, "limit": limit, "total_count": len(items),
                                  "first": {"href": self._href(f"{path}?limit={limit}")}}
        if start + limit < len(items):
            result["next"] = {"href": self._href(f"{path}?{urlencode({'limit': limit, 'start': start + limit})}")}
        return 200, result

    @staticmethod
    def _filter(table: Dict[str, Dict[str, Any]], query: Dict[str, str], filters: Dict[str, str]) -> List[Dict[str, Any]]:
        def value(item: Dict[str, Any], dotted: str) -> Any:
            for part in dotted.split("."):
                item = (item or {}).get(part)  # type: ignore[assignment]
            return item

        return [i for i in table.values() if all(value(i, field) == query[param] for param, field in filters.items() if param in query)]

    @staticmethod
    def _get(table: Dict[str, Dict[str, Any]], key: str, what: str) -> Dict[str, Any]:
        if key not in table:
            raise ApiError(404, "not_found", f"{what} not found")
        return table[key]

    def _delete(self, table: Dict[str, Dict[str, Any]], key: str, what: str) -> Tuple[int, Any]:
        self._get(table, key, what)
        del table[key]
        return 204, None

    def _unique_name(self, table: Dict[str, Dict[str, Any]], name: Optional[str], what: str, scope: Optional[Dict[str, str]] = None) -> str:
        if name is None:
            name = f"auto-{uuid.uuid4().hex[:8]}"
        if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 63:
            raise ApiError(400, "validation_invalid_name", f"{what} name {name!r} must be lowercase letters, digits and hyphens, at most 63")
        for item in table.values():
            if item.get("name") == name and all(item.get(k, {}).get("id") == v for k, v in (scope or {}).items()):
                raise ApiError(400, "validation_unique_failed", f"{what} name {name!r} is already in use")
        return name

    # ---- keys -------------------------------------------------------------------------

    def _create_key(self, body: Dict[str, Any]) -> Tuple[int, Any]:
        _require(body, "public_key")
        fields = str(body["public_key"]).split()
        key_type = body.get("type", "rsa")
        expected = {"rsa": "ssh-rsa", "ed25519": "ssh-ed25519"}.get(key_type)
        if expected is None:
            raise ApiError(400, "validation_invalid_type", f"key type {key_type!r} must be rsa or ed25519")
        if len(fields) < 2 or fields[0] != expected:
            raise ApiError(400, "key_invalid", f"public_key is not a valid {key_type} public key")
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except ValueError:
            raise ApiError(400, "key_invalid", "public_key is not valid base64") from None
        fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        if any(k["fingerprint"] == fingerprint for k in self.keys.values()):
            raise ApiError(400, "key_exists", "a key with the same fingerprint already exists")
        name = self._unique_name(self.keys, body.get("name"), "key")
        key_id = f"r014-{uuid.uuid4()}"
        self.keys[key_id] = {"id": key_id, "name": name, "type": key_type, "public_key": " ".join(fields[:2]),
                             "fingerprint": fingerprint, "length": len(blob) * 8 if key_type == "rsa" else 256,
                             "created_at": _now(), "href": self._href(f"/keys/{key_id}"), "resource_type": "key"}
        return 201, self.keys[key_id]

    # ---- security groups -----------------------------------------------------------

    def _new_group(self, vpc: Dict[str, Any], name: str, rules: List[Dict[str, Any]]) -> Dict[str, Any]:
        group_id = f"r014-{uuid.uuid4()}"
        group = {"id": group_id, "name": name, "vpc": {"id": vpc["id"], "name": vpc["name"]}, "rules": [],
                 "created_at": _now(), "href": self._href(f"/security_groups/{group_id}"), "resource_type": "security_group",
                 "crn": f"crn:v1:bluemix:public:is:{self.region}:a/test::security-group:{group_id}"}
        self.security_groups[group_id] = group
        for rule in rules:
            group["rules"].append(self._rule(group, rule))
        return group

    def _rule(self, group: Dict[str, Any], body: Dict[str, Any]) -> Dict[str, Any]:
        _require(body, "direction", "protocol", where="rule ")
        if body["direction"] not in ("inbound", "outbound"):
            raise ApiError(400, "validation_invalid_direction", "direction must be inbound or outbound")
        if body["protocol"] not in PROTOCOLS:
            raise ApiError(400, "validation_invalid_protocol", f"protocol {body['protocol']!r} is not supported")
        if body.get("ip_version", "ipv4") != "ipv4":
            raise ApiError(400, "validation_invalid_ip_version", "ip_version must be ipv4")
        rule = {k: body[k] for k in ("direction", "protocol", "ip_version", "name") if k in body}
        rule.setdefault("ip_version", "ipv4")
        if body["protocol"] in ("tcp", "udp"):
            low, high = body.get("port_min", 1), body.get("port_max", 65535)
            if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 65535):
                raise ApiError(400, "validation_invalid_port", "port_min and port_max must be 1-65535 with port_min <= port_max")
            rule.update(port_min=low, port_max=high)
        remote = body.get("remote") or {"cidr_block": "0.0.0.0/0"}
        if "cidr_block" in remote:
            try:
                ipaddress.IPv4Network(remote["cidr_block"])
            except ValueError:
                raise ApiError(400, "validation_invalid_cidr", f"remote.cidr_block {remote['cidr_block']!r} is not an IPv4 CIDR") from None
            rule["remote"] = {"cidr_block": remote["cidr_block"]}
        elif "address" in remote:
            rule["remote"] = {"address": remote["address"]}
        elif "id" in remote:
            other = self.security_groups.get(remote["id"])
            if other is None or other["vpc"]["id"] != group["vpc"]["id"]:
                raise ApiError(400, "validation_invalid_remote", "remote security group not found in this VPC")
            rule["remote"] = {"id": other["id"], "name": other["name"], "href": other["href"]}
        else:
            raise ApiError(400, "validation_invalid_remote", "remote must have cidr_block, address or id")
        rule_id = f"r014-{uuid.uuid4()}"
        rule.update(id=rule_id, href=f"{group['href']}/rules/{rule_id}")
        return rule

    def _create_group(self, body: Dict[str, Any]) -> Tuple[int, Any]:
        vpc = self._get(self.vpcs, _ref(body, "vpc"), "VPC")
        name = self._unique_name(self.security_groups, body.get("name"), "security group", scope={"vpc": vpc["id"]})
        rules = body.get("rules") or []
        if not isinstance(rules, list):
            raise ApiError(400, "bad_request", "rules must be a list")
        group = self._new_group(vpc, name, [])
        try:
            for rule in rules:
                group["rules"].append(self._rule(group, rule))
        except ApiError:
            del self.security_groups[group["id"]]
            raise
        return 201, self._group_view(group)

    def _create_rule(self, group_id: str, body: Dict[str, Any]) -> Tuple[int, Any]:
        group = self._get(self.security_groups, group_id, "security group")
        rule = self._rule(group, body)
        group["rules"].append(rule)
        return 201, rule

    def _group_targets(self, group_id: str) -> List[Dict[str, Any]]:
        return [
            {"id": i["primary_network_interface"]["id"], "name": i["primary_network_interface"]["name"], "resource_type": "network_interface"}
            for i in self.instances.values() if group_id in i["_security_groups"]
        ]

    def _group_view(self, group: Dict[str, Any]) -> Dict[str, Any]:
        return dict(group, targets=self._group_targets(group["id"]))

    def _delete_group(self, group_id: str) -> Tuple[int, Any]:
        group = self._get(self.security_groups, group_id, "security group")
        if self._group_targets(group_id):
            raise ApiError(409, "security_group_in_use", "the security group has targets: remove them first")
        if any(v.get("default_security_group", {}).get("id") == group_id for v in self.vpcs.values()):
            raise ApiError(409, "security_group_is_default", "a VPC's default security group cannot be deleted")
        del self.security_groups[group["id"]]
        return 204, None

    # ---- instances -------------------------------------------------------------------

    def _create_instance(self, body: Dict[str, Any]) -> Tuple[int, Any]:
        _require(body, "zone", "primary_network_interface")
        if "image" not in body and "source_template" not in body and "boot_volume_attachment" not in body:
            raise ApiError(400, "missing_field", "image is required")
        image = self._get(self.images, _ref(body, "image"), "image")
        profile_name = (body.get("profile") or {}).get("name", "bx2-2x8")
        profile = self.profiles.get(profile_name)
        if profile is None:
            raise ApiError(400, "validation_invalid_profile", f"instance profile {profile_name!r} is not available in {self.region}")
        zone = (body.get("zone") or {}).get("name")
        if zone not in {z["name"] for z in profile["zones"]}:
            raise ApiError(400, "validation_profile_zone", f"instance profile {profile_name} is not available in zone {zone}")
        if image["operating_system"]["architecture"] not in profile["os_architecture"]["values"]:
            raise ApiError(400, "validation_image_architecture", f"image {image['name']} does not run on {profile_name}")
        klass = (body.get("availability") or {}).get("class", "standard")
        offered = profile["availability_class"].get("values") or [profile["availability_class"].get("value")]
        if klass not in offered:
            raise ApiError(400, "validation_availability_class", f"profile {profile_name} does not offer availability class {klass}")
        trusted = body.get("default_trusted_profile")
        if trusted is not None and not (trusted.get("target") or {}).get("id", "").startswith("Profile-"):
            raise ApiError(400, "validation_trusted_profile", "default_trusted_profile.target must name a trusted profile id (Profile-...)")
        keys = []
        for ref in body.get("keys") or []:
            keys.append(self._get(self.keys, (ref or {}).get("id", ""), "key"))
        nic_body = body["primary_network_interface"]
        subnet = self._get(self.subnets, _ref(nic_body, "subnet"), "subnet")
        if subnet["zone"]["name"] != zone:
            raise ApiError(400, "validation_subnet_zone", f"subnet {subnet['name']} is not in zone {zone}")
        vpc_id = (body.get("vpc") or {}).get("id", subnet["vpc"]["id"])
        if vpc_id != subnet["vpc"]["id"]:
            raise ApiError(400, "validation_subnet_vpc", "the subnet is not in the instance's VPC")
        vpc = self._get(self.vpcs, vpc_id, "VPC")
        groups = [g.get("id", "") for g in nic_body.get("security_groups") or [vpc["default_security_group"]]]
        for group_id in groups:
            group = self._get(self.security_groups, group_id, "security group")
            if group["vpc"]["id"] != vpc_id:
                raise ApiError(400, "validation_security_group_vpc", "the security group is not in the instance's VPC")
        name = self._unique_name(self.instances, body.get("name"), "instance")
        instance_id = f"0757_{uuid.uuid4()}"
        nic_id = f"0757-{uuid.uuid4()}"
        subnet["available_ipv4_address_count"] -= 1
        network = ipaddress.ip_network(subnet["ipv4_cidr_block"])
        nic = {"id": nic_id, "name": nic_body.get("name") or "eth0", "resource_type": "network_interface",
               "href": self._href(f"/instances/{instance_id}/network_interfaces/{nic_id}"),
               "primary_ip": {"address": str(network.network_address + next(self._addresses))},
               "subnet": {"id": subnet["id"], "name": subnet["name"]}}
        now = time.monotonic()
        self.instances[instance_id] = {
            "id": instance_id, "name": name, "status": "pending", "status_reasons": [], "lifecycle_state": "pending",
            "created_at": _now(), "href": self._href(f"/instances/{instance_id}"), "resource_type": "instance",
            "crn": f"crn:v1:bluemix:public:is:{zone}:a/test::instance:{instance_id}",
            "profile": {"name": profile_name, "href": self._href(f"/instance/profiles/{profile_name}")},
            "image": {"id": image["id"], "name": image["name"]}, "vpc": {"id": vpc["id"], "name": vpc["name"]},
            "zone": {"name": zone}, "availability": {"class": klass},
            "metadata_service": {"enabled": bool((body.get("metadata_service") or {}).get("enabled")), "protocol": "http"},
            "vcpu": {"count": profile["vcpu_count"]["value"]}, "memory": profile["memory"]["value"],
            "primary_network_interface": nic, "network_interfaces": [nic],
            "_security_groups": groups, "_changed": now, "_target": "running",
            "_initialization": {"keys": [{"id": k["id"], "name": k["name"], "fingerprint": k["fingerprint"]} for k in keys],
                                "image": {"id": image["id"], "name": image["name"]}, "user_accounts": []},
        }
        return 201, self.instances[instance_id]

    def _instance_action(self, instance_id: str, body: Dict[str, Any]) -> Tuple[int, Any]:
        instance = self._get(self.instances, instance_id, "instance")
        _require(body, "type")
        kind = body["type"]
        if kind not in ("start", "stop", "reboot"):
            raise ApiError(400, "validation_invalid_type", "type must be start, stop or reboot")
        if instance["status"] == "deleting":
            raise ApiError(409, "instance_deleting", "the instance is being deleted")
        transitions = {"stop": ("stopping", "stopped"), "start": ("starting", "running"), "reboot": ("restarting", "running")}
        instance["status"], instance["_target"] = transitions[kind]
        instance["_changed"] = time.monotonic()
        action_id = f"0757-{uuid.uuid4()}"
        return 201, {"id": action_id, "type": kind, "status": "pending", "created_at": _now(),
                     "href": f"{instance['href']}/actions/{action_id}", "force": bool(body.get("force"))}

    def _delete_instance(self, instance_id: str) -> Tuple[int, Any]:
        instance = self._get(self.instances, instance_id, "instance")
        instance["status"], instance["_target"], instance["_changed"] = "deleting", "gone", time.monotonic()
        return 204, None

    def _tick(self) -> None:
        """Move instances along: a pending one runs after start_delay, a deleting one is gone after delete_delay."""
        now = time.monotonic()
        for instance_id, instance in list(self.instances.items()):
            target = instance["_target"]
            delay = self.delete_delay if target == "gone" else self.start_delay
            if instance["status"] == target or now - instance["_changed"] < delay:
                continue
            if target == "gone":
                del self.instances[instance_id]
                # as IBM does: the instance's interfaces go with it, and a floating IP bound to one stays, unbound (and billed)
                nics = {n.get("id") for n in [instance["primary_network_interface"], *(instance.get("network_interfaces") or [])]}
                for floating in self.floating_ips.values():
                    if (floating.get("target") or {}).get("id") in nics:
                        del floating["target"]
                subnet = self.subnets.get(instance["primary_network_interface"]["subnet"]["id"])
                if subnet:
                    subnet["available_ipv4_address_count"] += 1
            else:
                instance["status"] = target
                instance["lifecycle_state"] = "stable"

    # ---- floating IPs ----------------------------------------------------------------

    def _create_floating_ip(self, body: Dict[str, Any]) -> Tuple[int, Any]:
        if not body.get("target") and not body.get("zone"):
            raise ApiError(400, "missing_field", "target or zone is required")
        target = None
        zone = (body.get("zone") or {}).get("name")
        if body.get("target"):
            nic_id = (body["target"] or {}).get("id")
            owner = next((i for i in self.instances.values() if i["primary_network_interface"]["id"] == nic_id), None)
            if owner is None:
                raise ApiError(400, "validation_invalid_target", "target network interface not found")
            if any((f.get("target") or {}).get("id") == nic_id for f in self.floating_ips.values()):
                raise ApiError(409, "floating_ip_target_in_use", "the network interface already has a floating IP")
            nic = owner["primary_network_interface"]
            target = {"id": nic_id, "name": nic["name"], "resource_type": "network_interface", "href": nic["href"],
                      "primary_ip": nic["primary_ip"]}
            if zone and zone != owner["zone"]["name"]:
                raise ApiError(400, "validation_zone", "the floating IP's zone must be the target's zone")
            zone = owner["zone"]["name"]
        name = self._unique_name(self.floating_ips, body.get("name"), "floating IP")
        fip_id = f"r014-{uuid.uuid4()}"
        self.floating_ips[fip_id] = {
            "id": fip_id, "name": name, "address": f"169.63.{len(self.floating_ips) // 250}.{len(self.floating_ips) % 250 + 2}",
            "status": "available", "zone": {"name": zone}, "created_at": _now(), "resource_type": "floating_ip",
            "href": self._href(f"/floating_ips/{fip_id}"), "crn": f"crn:v1:bluemix:public:is:{zone}:a/test::floating-ip:{fip_id}",
            **({"target": target} if target else {}),
        }
        return 201, self.floating_ips[fip_id]


def _public(payload: Any) -> Any:
    """Drop the server's own bookkeeping (keys starting with `_`) from what it answers."""
    if isinstance(payload, dict):
        return {k: _public(v) for k, v in payload.items() if not k.startswith("_")}
    if isinstance(payload, list):
        return [_public(v) for v in payload]
    return payload
