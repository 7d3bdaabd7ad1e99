"""What cannot be the same on this machine, and what stands in for it.

In AWS a container reaches the others by Cloud Map names, the load balancer by DNS or
UI host names, the database at RDS; it writes under ``/tmp`` and volume mounts. Here
each service has a 127.0.0.1 port, the database is a local Postgres, each path a
folder. :class:`Mapper` rewrites exactly host and port, path prefixes and ``sslmode``
and keeps the rest (users, passwords, database names, URL paths), so a wrong one still
fails; a name it cannot map is a wiring error naming the container and variable."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from terraform.scripts.rehearsal.deployment import Deployment, WiringError

LOOPBACK = "127.0.0.1"
#: What libpq's and asyncpg's sslmode become: the local Postgres has no TLS (RDS forces it).
LOCAL_SSLMODE = "prefer"
STRICT_SSLMODES = ("require", "verify-ca", "verify-full")
DEFAULT_PORTS = {"http": 80, "https": 443}
#: AWS host names that can only be one of the deployment's own resources.
AWS_SUFFIXES = (".elb.amazonaws.com", ".rds.amazonaws.com")


@dataclass(frozen=True)
class Target:
    """Where a name and port lead here, and what it stands for (for the report)."""

    port: int
    what: str
    #: https to the load balancer ends at it: the service behind speaks http
    plain_http: bool = False


@dataclass
class Mapper:
    """Rewrites values of one deployment for this machine (see the module docstring)."""

    deployment: Deployment
    #: (ECS service, container port) -> local port
    ports: dict[tuple[str, int], int]
    postgres_port: int
    #: notes for the report: "where: before -> after (why)"; never a value, only names
    notes: list[str] = field(default_factory=list)
    #: ports of the host names one container gives alone -> local ports (reset per container)
    bare_ports: dict[int, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ hosts
    def host_pattern(self) -> re.Pattern[str]:
        names = sorted(
            {*self.deployment.discovery, *self.deployment.load_balancers, *self._ui_hosts()},
            key=len,
            reverse=True,
        )
        names.append(self.deployment.database.address)
        generic = [rf"[\w-]+\.{re.escape(ns)}" for ns in self.deployment.namespaces]
        generic += [rf"[\w.-]+{re.escape(suffix)}" for suffix in AWS_SUFFIXES]
        hosts = "|".join([*(re.escape(n) for n in names), *generic])
        return re.compile(
            r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)?(?P<userinfo>[^\s/@:]*(?::[^\s/@]*)?@)?"
            rf"(?P<host>{hosts})(?::(?P<port>\d+))?(?![\w.-])",
            re.IGNORECASE,
        )

    def _ui_hosts(self) -> set[str]:
        return {
            host
            for listeners in self.deployment.load_balancers.values()
            for listener in listeners.values()
            for rule in listener.rules
            for host in rule.hosts
            if "*" not in host and "?" not in host
        }

    def resolve(self, host: str, port: int | None, scheme: str, where: str) -> Target:
        """The local port a host and port of the deployment stand for."""
        host = host.lower()
        database = self.deployment.database
        if host == database.address.lower():
            if port not in (None, database.port):
                raise WiringError(
                    f"{where}: the database {host} listens on {database.port}, not {port}"
                )
            return Target(self.postgres_port, "the database (local Postgres)")
        wanted = port if port is not None else DEFAULT_PORTS.get(scheme.lower())
        if host in self.deployment.discovery:
            return self._service_port(self.deployment.discovery[host], wanted, where)
        balancer = self._balancer_for(host)
        if balancer is not None:
            return self._through_balancer(balancer, host, wanted, scheme, where)
        known = ", ".join(sorted(self.deployment.discovery)) or "none"
        raise WiringError(
            f"{where}: {host} is not a name of this deployment"
            f" (Cloud Map names: {known}; load balancers:"
            f" {', '.join(sorted(self.deployment.load_balancers)) or 'none'};"
            f" database: {database.address})"
        )

    def _service_port(self, service: str, wanted: int | None, where: str) -> Target:
        listening = self.deployment.tasks[service].ports
        if wanted not in listening:
            ports = ", ".join(map(str, listening)) or "none"
            raise WiringError(
                f"{where}: port {wanted} of ECS service {service}: its containers listen on {ports}"
            )
        return Target(self.ports[(service, wanted)], f"ECS service {service} port {wanted}")

    def _balancer_for(self, host: str) -> str | None:
        """The DNS name of the load balancer ``host`` names (itself, or a rule's host)."""
        for dns_name, listeners in self.deployment.load_balancers.items():
            if host == dns_name.lower() or any(
                fnmatch.fnmatch(host, h.lower())
                for listener in listeners.values()
                for r in listener.rules
                for h in r.hosts
            ):
                return dns_name
        return None

    def _through_balancer(
        self, lb: str, host: str, wanted: int | None, scheme: str, where: str
    ) -> Target:
        listeners = self.deployment.load_balancers[lb]
        listener = listeners.get(wanted or 0)
        if listener is None:
            ports = ", ".join(map(str, sorted(listeners))) or "none"
            raise WiringError(
                f"{where}: the load balancer {lb} has no listener on port {wanted}"
                f" (listeners: {ports})"
            )
        if scheme and listener.protocol.lower() != scheme.lower():
            raise WiringError(
                f"{where}: {scheme}://{host}:{wanted} but that listener speaks {listener.protocol}"
            )
        for rule in listener.rules:
            if rule.hosts and not any(fnmatch.fnmatch(host, h.lower()) for h in rule.hosts):
                continue
            kind, detail = rule.outcome
            if kind != "forward":
                raise WiringError(
                    f"{where}: the load balancer answers {scheme}://{host}:{wanted} itself"
                    f" ({kind} {detail}), it forwards it to no service"
                )
            service, target_port = self.deployment.service_of_target_group(detail)
            target = self._service_port(service, target_port, where)
            signed = ", behind sign-in" if rule.authenticated else ""
            return Target(
                target.port,
                f"load balancer -> ECS service {service} port {target_port}{signed}",
                plain_http=listener.protocol == "HTTPS",
            )
        raise WiringError(f"{where}: no rule of listener {wanted} matches host {host}")

    # ------------------------------------------------------------------ values
    def value(self, text: str, where: str, local_ports: dict[int, int] | None = None) -> str:
        """``text`` with the deployment's hosts, the task's own ports (``local_ports``:
        container port -> local port, for ``localhost:<port>``) and strict sslmodes
        rewritten; a WiringError names ``where`` when a name cannot be mapped."""
        text = self.host_pattern().sub(lambda m: self._rewrite(m, where), text)
        if local_ports:
            text = _LOCALHOST.sub(lambda m: _own_port(m, local_ports), text)
        return self._sslmode(text, where)

    def _rewrite(self, match: re.Match[str], where: str) -> str:
        scheme = (match["scheme"] or "").removesuffix("://")
        port = int(match["port"]) if match["port"] else None
        if port is None and not scheme:
            return self._bare_host(match, where)
        target = self.resolve(match["host"], port, scheme, where)
        if target.plain_http and scheme.lower() == "https":
            scheme = "http"
        self.notes.append(
            f"{where}: {match['host']}{':' + match['port'] if port else ''}"
            f" -> {LOOPBACK}:{target.port} ({target.what})"
        )
        prefix = f"{scheme}://" if scheme else ""
        return f"{prefix}{match['userinfo'] or ''}{LOOPBACK}:{target.port}"

    def _bare_host(self, match: re.Match[str], where: str) -> str:
        """A host name alone (its port in another variable): 127.0.0.1, and the ports it
        may be used with remembered for :meth:`port_variable`."""
        host = match["host"].lower()
        database = self.deployment.database
        if host == database.address.lower():
            self.bare_ports[database.port] = self.postgres_port
        elif host in self.deployment.discovery:
            service = self.deployment.discovery[host]
            for port in self.deployment.tasks[service].ports:
                self.bare_ports[port] = self.ports[(service, port)]
        elif self._balancer_for(host) is None:
            self.resolve(host, None, "", where)  # raises: not a name of this deployment
        self.notes.append(f"{where}: {match['host']} -> {LOOPBACK}")
        return f"{match['userinfo'] or ''}{LOOPBACK}"

    def port_variable(self, text: str, where: str, own_ports: dict[int, int]) -> str:
        """A variable that is only a port number: used with a host name given alone
        elsewhere in the same container (DB_HOST and DB_PORT), or one of the container's
        own ports; its local port."""
        ports = {**own_ports, **self.bare_ports}
        if not text.isdigit() or int(text) not in ports:
            return text
        local = ports[int(text)]
        self.notes.append(f"{where}: {text} -> {local}")
        return str(local)

    def _sslmode(self, text: str, where: str) -> str:
        def local(match: re.Match[str]) -> str:
            self.notes.append(f"{where}: sslmode {match[2]} -> {LOCAL_SSLMODE} (no TLS here)")
            return f"{match[1]}{LOCAL_SSLMODE}"

        return _SSLMODE.sub(local, text)

    def variable(self, name: str, text: str, where: str, local_ports: dict[int, int]) -> str:
        """A variable's value: :meth:`value`, and libpq's PGSSLMODE itself."""
        if name == "PGSSLMODE" and text in STRICT_SSLMODES:
            self.notes.append(f"{where}: {text} -> {LOCAL_SSLMODE} (no TLS here)")
            return LOCAL_SSLMODE
        return self.value(text, where, local_ports)


_LOCALHOST = re.compile(r"\b(localhost|127\.0\.0\.1|0\.0\.0\.0):(\d+)\b")
_SSLMODE = re.compile(r"\b((?:sslmode|ssl)=)(require|verify-ca|verify-full)\b")


def _own_port(match: re.Match[str], local_ports: dict[int, int]) -> str:
    port = int(match[2])
    return f"{LOOPBACK}:{local_ports[port]}" if port in local_ports else match[0]


# ---------------------------------------------------------------------------- commands
def command(argv: list[str], mapper: Mapper, where: str, local_ports: dict[int, int]) -> list[str]:
    """A container's command for this machine: bind to loopback, its ports mapped."""
    out = []
    for token in argv:
        if token == "0.0.0.0":
            token = LOOPBACK
        elif token.isdigit() and int(token) in local_ports:
            token = str(local_ports[int(token)])
        else:
            token = mapper.value(token, where, local_ports)
        out.append(token)
    return out


# ---------------------------------------------------------------------------- paths
@dataclass
class Paths:
    """Container paths -> folders of the rehearsal: longest prefix first."""

    prefixes: dict[str, Path]

    def value(self, text: str) -> str:
        """Each container path prefix replaced, in one pass (a folder may be under /tmp)."""
        if not self.prefixes:
            return text
        ordered = sorted((p.rstrip("/") for p in self.prefixes), key=len, reverse=True)
        local = {p.rstrip("/"): str(folder) for p, folder in self.prefixes.items()}
        alternatives = "|".join(re.escape(p) for p in ordered)
        pattern = re.compile(rf"(?<![\w.-])({alternatives})(?=/|$|[^\w.-])")
        return pattern.sub(lambda match: local[match[1]], text)
