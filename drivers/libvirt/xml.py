"""libvirt domain XML <-> data objects, built with lxml.

Like Nova's libvirt `config.py`: these classes only map data to XML and back. They hold no
policy (which bus, which cache mode, which disks); the driver decides and fills them in.
Every string goes through lxml, which escapes it, so user input can never inject markup.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lxml import etree

from virt.errors import InvalidRequest

#: Namespace of the instance description virtkit stores in `<metadata>`.
VIRTKIT_NS = "https://virtkit.dev/xmlns/libvirt/instance/1"
VIRTKIT_PREFIX = "virtkit"

_NSMAP = {VIRTKIT_PREFIX: VIRTKIT_NS}
_Q_INSTANCE, _Q_NAME, _Q_FLAVOR, _Q_IMAGE, _Q_PROPERTY = (
    f"{{{VIRTKIT_NS}}}{tag}" for tag in ("instance", "name", "flavor", "image", "property"))

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str | None) -> etree._Element:
    """Append a child element with the given text and the attributes that are not None."""
    # Attributes go in with the element: one lxml call instead of one per attribute.
    child = etree.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        child.text = text
    return child


# Prototypes of leaf elements whose values come from small sets (constants, device names,
# flavor sizes): copying one is about twice as fast as building it and its attributes.
_PROTOTYPES: dict[tuple[object, ...], etree._Element] = {}
_MAX_PROTOTYPES = 512


def _leaf(parent: etree._Element, tag: str, text: str | None = None, **attrs: str | None
          ) -> etree._Element:
    """Like `_sub`, for a childless element whose values repeat from domain to domain."""
    key = (tag, text, *attrs.items())
    proto = _PROTOTYPES.get(key)
    if proto is None:
        if len(_PROTOTYPES) >= _MAX_PROTOTYPES:
            _PROTOTYPES.clear()
        proto = _sub(etree.Element("_"), tag, text, **attrs)
        _PROTOTYPES[key] = proto
    child = copy.copy(proto)
    parent.append(child)
    return child


def _text(element: etree._Element | None) -> str | None:
    return None if element is None else element.text


def parse(xml: str | bytes) -> etree._Element:
    """Parse XML text without resolving entities or touching the network."""
    try:
        return etree.fromstring(xml.encode() if isinstance(xml, str) else xml, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise InvalidRequest(f"not well-formed XML: {exc}") from None


@dataclass
class Disk:
    """A `<disk>`: a local file or block device, or a network (iSCSI) source."""

    target_dev: str
    target_bus: str = "virtio"
    device: str = "disk"
    source_type: str = "file"
    source_path: str | None = None
    driver_type: str = "qcow2"
    cache: str | None = None
    protocol: str | None = None
    source_name: str | None = None
    hosts: list[tuple[str, int]] = field(default_factory=list)
    auth_username: str | None = None
    secret_type: str | None = None
    secret_usage: str | None = None
    secret_uuid: str | None = None
    initiator: str | None = None
    serial: str | None = None
    readonly: bool = False

    def to_element(self) -> etree._Element:
        disk = etree.Element("disk", type=self.source_type, device=self.device)
        _leaf(disk, "driver", name="qemu", type=self.driver_type, cache=self.cache)
        if self.source_type == "network":
            source = _sub(disk, "source", protocol=self.protocol, name=self.source_name)
            for host, port in self.hosts:
                _sub(source, "host", name=host, port=str(port))
            if self.auth_username is not None:
                auth = _sub(source, "auth", username=self.auth_username)
                _sub(auth, "secret", type=self.secret_type, usage=self.secret_usage,
                     uuid=self.secret_uuid)
            if self.initiator is not None:
                _sub(_sub(source, "initiator"), "iqn", name=self.initiator)
        elif self.source_type == "block":
            _sub(disk, "source", dev=self.source_path)
        else:
            _sub(disk, "source", file=self.source_path)
        _leaf(disk, "target", dev=self.target_dev, bus=self.target_bus)
        if self.serial is not None:
            _sub(disk, "serial", self.serial)
        if self.readonly:
            _leaf(disk, "readonly")
        return disk

    @classmethod
    def from_element(cls, disk: etree._Element) -> Disk:
        driver = disk.find("driver")
        source = disk.find("source")
        target = disk.find("target")
        source_type = disk.get("type", "file")
        obj = cls(
            target_dev=target.get("dev", "") if target is not None else "",
            target_bus=target.get("bus", "virtio") if target is not None else "virtio",
            device=disk.get("device", "disk"),
            source_type=source_type,
            driver_type=driver.get("type", "raw") if driver is not None else "raw",
            cache=driver.get("cache") if driver is not None else None,
            serial=_text(disk.find("serial")),
            readonly=disk.find("readonly") is not None,
        )
        if source is None:
            return obj
        if source_type == "network":
            obj.protocol = source.get("protocol")
            obj.source_name = source.get("name")
            obj.hosts = [(h.get("name", ""), int(h.get("port", "0"))) for h in source.findall("host")]
            # libvirt accepts <auth> inside <source> or directly in <disk>.
            auth = source.find("auth")
            if auth is None:
                auth = disk.find("auth")
            if auth is not None:
                obj.auth_username = auth.get("username")
                secret = auth.find("secret")
                if secret is not None:
                    obj.secret_type = secret.get("type")
                    obj.secret_usage = secret.get("usage")
                    obj.secret_uuid = secret.get("uuid")
            iqn = source.find("initiator/iqn")
            if iqn is not None:
                obj.initiator = iqn.get("name")
        else:
            obj.source_path = source.get("dev" if source_type == "block" else "file")
        return obj


@dataclass
class Interface:
    """An `<interface>`: `bridge`, libvirt `network`, or `user` (usermode NAT)."""

    mac: str
    type: str = "user"
    source: str | None = None
    model: str | None = "virtio"

    def to_element(self) -> etree._Element:
        iface = etree.Element("interface", type=self.type)
        _sub(iface, "mac", address=self.mac)
        if self.type == "bridge":
            _sub(iface, "source", bridge=self.source)
        elif self.type == "network":
            _sub(iface, "source", network=self.source)
        if self.model is not None:
            _leaf(iface, "model", type=self.model)
        return iface

    @classmethod
    def from_element(cls, iface: etree._Element) -> Interface:
        mac = iface.find("mac")
        source = iface.find("source")
        model = iface.find("model")
        kind = iface.get("type", "user")
        src = None
        if source is not None:
            src = source.get("bridge") if kind == "bridge" else source.get("network")
        return cls(
            mac=mac.get("address", "") if mac is not None else "",
            type=kind,
            source=src,
            model=model.get("type") if model is not None else None,
        )


@dataclass
class SerialFile:
    """A `<serial type='file'>`: the guest's serial port written to a log file."""

    path: str
    port: int = 0

    def to_element(self) -> etree._Element:
        serial = etree.Element("serial", type="file")
        _sub(serial, "source", path=self.path, append="on")
        _leaf(serial, "target", port=str(self.port))
        return serial

    @classmethod
    def from_element(cls, serial: etree._Element) -> SerialFile:
        source = serial.find("source")
        target = serial.find("target")
        return cls(
            path=source.get("path", "") if source is not None else "",
            port=int(target.get("port", "0")) if target is not None else 0,
        )


@dataclass
class Os:
    """`<os>`: the machine type and either disk boot or direct kernel boot."""

    type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_devs: list[str] = field(default_factory=lambda: ["hd"])

    def to_element(self) -> etree._Element:
        os_el = etree.Element("os")
        _leaf(os_el, "type", self.type, arch=self.arch, machine=self.machine)
        if self.kernel is not None:
            _sub(os_el, "kernel", self.kernel)
        if self.initrd is not None:
            _sub(os_el, "initrd", self.initrd)
        if self.cmdline is not None:
            _sub(os_el, "cmdline", self.cmdline)
        for dev in self.boot_devs:
            _leaf(os_el, "boot", dev=dev)
        return os_el

    @classmethod
    def from_element(cls, os_el: etree._Element) -> Os:
        type_el = os_el.find("type")
        return cls(
            type=_text(type_el) or "hvm",
            arch=type_el.get("arch") if type_el is not None else None,
            machine=type_el.get("machine") if type_el is not None else None,
            kernel=_text(os_el.find("kernel")),
            initrd=_text(os_el.find("initrd")),
            cmdline=_text(os_el.find("cmdline")),
            boot_devs=[b.get("dev", "") for b in os_el.findall("boot")],
        )


@dataclass
class InstanceMetadata:
    """virtkit's own description of the instance, kept in `<metadata>` in our namespace."""

    name: str
    flavor: str
    vcpus: int
    memory_mb: int
    root_gb: int = 0
    ephemeral_gb: int = 0
    swap_mb: int = 0
    image: str | None = None
    properties: dict[str, str] = field(default_factory=dict)

    def to_element(self) -> etree._Element:
        root = etree.Element(_Q_INSTANCE, nsmap=_NSMAP)
        _sub(root, _Q_NAME, self.name)
        _sub(
            root,
            _Q_FLAVOR,
            name=self.flavor,
            vcpus=str(self.vcpus),
            memory_mb=str(self.memory_mb),
            root_gb=str(self.root_gb),
            ephemeral_gb=str(self.ephemeral_gb),
            swap_mb=str(self.swap_mb),
        )
        if self.image is not None:
            _sub(root, _Q_IMAGE, self.image)
        self.add_properties(root, self.properties)
        return root

    @staticmethod
    def add_properties(root: etree._Element, properties: Mapping[str, str]) -> None:
        """Append `properties` (sorted by key) to an instance element built by `to_element`."""
        for key, value in sorted(properties.items()):
            _sub(root, _Q_PROPERTY, value, key=key)

    @classmethod
    def from_element(cls, root: etree._Element) -> InstanceMetadata:
        q = f"{{{VIRTKIT_NS}}}"
        flavor = root.find(q + "flavor")
        attrs = dict(flavor.attrib) if flavor is not None else {}
        return cls(
            name=_text(root.find(q + "name")) or "",
            flavor=attrs.get("name", ""),
            vcpus=int(attrs.get("vcpus", "0")),
            memory_mb=int(attrs.get("memory_mb", "0")),
            root_gb=int(attrs.get("root_gb", "0")),
            ephemeral_gb=int(attrs.get("ephemeral_gb", "0")),
            swap_mb=int(attrs.get("swap_mb", "0")),
            image=_text(root.find(q + "image")),
            properties={p.get("key", ""): p.text or "" for p in root.findall(q + "property")},
        )


@dataclass
class Domain:
    """A `<domain>` with the parts virtkit uses."""

    name: str
    uuid: str
    memory_kib: int
    vcpus: int
    type: str = "kvm"
    os: Os = field(default_factory=Os)
    features: list[str] = field(default_factory=lambda: ["acpi", "apic"])
    cpu_mode: str | None = None
    clock_offset: str = "utc"
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    disks: list[Disk] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    serials: list[SerialFile] = field(default_factory=list)
    metadata: InstanceMetadata | None = None
    memballoon: bool = False

    def to_element(self) -> etree._Element:
        dom = etree.Element("domain", type=self.type)
        _sub(dom, "name", self.name)
        _sub(dom, "uuid", self.uuid)
        if self.metadata is not None:
            _sub(dom, "metadata").append(self.metadata.to_element())
        _leaf(dom, "memory", str(self.memory_kib), unit="KiB")
        _leaf(dom, "vcpu", str(self.vcpus))
        dom.append(self.os.to_element())
        if self.features:
            feats = _sub(dom, "features")
            for name in self.features:
                _leaf(feats, name)
        if self.cpu_mode is not None:
            _leaf(dom, "cpu", mode=self.cpu_mode)
        _leaf(dom, "clock", offset=self.clock_offset)
        _leaf(dom, "on_poweroff", self.on_poweroff)
        _leaf(dom, "on_reboot", self.on_reboot)
        _leaf(dom, "on_crash", self.on_crash)
        devices = _sub(dom, "devices")
        for disk in self.disks:
            devices.append(disk.to_element())
        for iface in self.interfaces:
            devices.append(iface.to_element())
        for serial in self.serials:
            devices.append(serial.to_element())
        if not self.memballoon:
            _leaf(devices, "memballoon", model="none")
        return dom

    def to_xml(self, pretty: bool = False) -> str:
        """The domain as XML text; InvalidRequest if a value cannot be represented in XML."""
        try:
            return etree.tostring(self.to_element(), encoding="unicode", pretty_print=pretty)
        except (ValueError, TypeError) as exc:
            # lxml refuses control characters and NULs: say so instead of a raw ValueError.
            raise InvalidRequest(
                f"domain {self.name}: a value cannot be stored in XML ({exc})",
                hint="remove control characters from names and metadata",
            ) from None

    @classmethod
    def from_xml(cls, xml: str | bytes) -> Domain:
        return cls.from_element(parse(xml))

    @classmethod
    def from_element(cls, dom: etree._Element) -> Domain:
        memory = dom.find("memory")
        memory_kib = int(memory.text or "0") if memory is not None else 0
        if memory is not None and memory.get("unit") not in (None, "KiB", "k"):
            memory_kib = _to_kib(memory_kib, memory.get("unit", "KiB"))
        os_el = dom.find("os")
        feats = dom.find("features")
        cpu = dom.find("cpu")
        clock = dom.find("clock")
        meta = dom.find(f"metadata/{{{VIRTKIT_NS}}}instance")
        devices = dom.find("devices")
        devs = devices if devices is not None else etree.Element("devices")
        return cls(
            name=_text(dom.find("name")) or "",
            uuid=_text(dom.find("uuid")) or "",
            memory_kib=memory_kib,
            vcpus=int(_text(dom.find("vcpu")) or "1"),
            type=dom.get("type", ""),
            os=Os.from_element(os_el) if os_el is not None else Os(),
            features=[f.tag for f in feats] if feats is not None else [],
            cpu_mode=cpu.get("mode") if cpu is not None else None,
            clock_offset=clock.get("offset", "utc") if clock is not None else "utc",
            on_poweroff=_text(dom.find("on_poweroff")) or "destroy",
            on_reboot=_text(dom.find("on_reboot")) or "restart",
            on_crash=_text(dom.find("on_crash")) or "destroy",
            disks=[Disk.from_element(d) for d in devs.findall("disk")],
            interfaces=[Interface.from_element(i) for i in devs.findall("interface")],
            serials=[SerialFile.from_element(s) for s in devs.findall("serial")
                     if s.get("type") == "file"],
            metadata=InstanceMetadata.from_element(meta) if meta is not None else None,
            memballoon=not any(m.get("model") == "none" for m in devs.findall("memballoon")),
        )


_Path = tuple[int, ...]


def _path_of(root: etree._Element, element: etree._Element) -> _Path:
    path: list[int] = []
    while element is not root:
        parent = element.getparent()
        if parent is None:
            raise ValueError("element is not under the template's root")
        path.append(parent.index(element))
        element = parent
    return tuple(reversed(path))


def _at(root: etree._Element, path: _Path) -> etree._Element:
    for index in path:
        root = root[index]
    return root


class Template:
    """An element tree built once with placeholder tokens, filled in per use.

    `render` copies the tree (one C-level deep copy) and sets only the texts and attributes
    that held a token, through lxml (escaped; control characters refused as ValueError),
    never by splicing text. Tokens are substituted in one pass, so a value that happens to
    contain a token is not substituted again. Which fields are placeholders is the caller's
    business; `anchors` name elements the caller wants back in each copy (to append to).
    """

    def __init__(self, root: etree._Element, tokens: Sequence[str],
                 anchors: Mapping[str, etree._Element] | None = None) -> None:
        self._root = root
        self._token_re = re.compile("|".join(re.escape(t) for t in tokens))
        # (path, attribute name or None for the text, the text split at tokens: odd = token)
        self._slots: list[tuple[_Path, str | None, list[str]]] = []
        for element in root.iter():
            path = _path_of(root, element)
            if element.text and self._token_re.search(element.text):
                self._slots.append((path, None, self._split(element.text)))
            for name, value in element.attrib.items():
                if self._token_re.search(value):
                    self._slots.append((path, str(name), self._split(value)))
        anchor_paths = {name: _path_of(root, el) for name, el in (anchors or {}).items()}
        # Render plan: the elements to reach in each copy, each as (index of its parent in
        # the plan, child index), parents first, so a shared prefix is walked once per copy.
        nodes: dict[_Path, int] = {(): 0}
        self._steps: list[tuple[int, int]] = []

        def node(path: _Path) -> int:
            if path not in nodes:
                parent = node(path[:-1])
                nodes[path] = len(self._steps) + 1
                self._steps.append((parent, path[-1]))
            return nodes[path]

        # (node, attribute name or None for the text, parts: odd ones are tokens)
        self._fills = [(node(path), attr, tuple(parts)) for path, attr, parts in self._slots]
        self._anchors = {name: node(path) for name, path in anchor_paths.items()}

    def _split(self, text: str) -> list[str]:
        parts: list[str] = []
        last = 0
        for match in self._token_re.finditer(text):
            parts += [text[last:match.start()], match.group(0)]
            last = match.end()
        parts.append(text[last:])
        return parts

    def render(self, values: Mapping[str, str]
               ) -> tuple[etree._Element, dict[str, etree._Element]]:
        """A filled-in copy and its anchors; KeyError if a token has no value."""
        root = self._root.__deepcopy__(None)
        elements = [root]
        for parent, index in self._steps:
            elements.append(elements[parent][index])
        for at, attr, parts in self._fills:
            if len(parts) == 3:  # the usual slot: one token with a fixed prefix and suffix
                text = parts[0] + values[parts[1]] + parts[2]
            else:
                text = "".join([values[p] if i % 2 else p for i, p in enumerate(parts)])
            if attr is None:
                elements[at].text = text
            else:
                elements[at].set(attr, text)
        return root, {name: elements[at] for name, at in self._anchors.items()}


def to_text(element: etree._Element, what: str) -> str:
    """`element` as XML text; InvalidRequest if a value cannot be represented in XML."""
    try:
        return etree.tostring(element, encoding="unicode")
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{what}: a value cannot be stored in XML ({exc})",
                             hint="remove control characters from names and metadata") from None


@dataclass
class Secret:
    """A libvirt `<secret>` for an iSCSI CHAP password; the value is set through the API."""

    usage_target: str
    uuid: str | None = None
    description: str | None = None

    def to_xml(self) -> str:
        secret = etree.Element("secret", ephemeral="no", private="yes")
        if self.uuid is not None:
            _sub(secret, "uuid", self.uuid)
        if self.description is not None:
            _sub(secret, "description", self.description)
        usage = _sub(secret, "usage", type="iscsi")
        _sub(usage, "target", self.usage_target)
        return etree.tostring(secret, encoding="unicode")


_UNITS = {"b": 1, "bytes": 1, "kib": 1024, "k": 1024, "kb": 1000, "mib": 1024**2, "m": 1024**2,
          "mb": 1000**2, "gib": 1024**3, "g": 1024**3, "gb": 1000**3}


def _to_kib(value: int, unit: str) -> int:
    return value * _UNITS.get(unit.lower(), 1024) // 1024
