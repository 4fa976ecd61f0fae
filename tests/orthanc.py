"""A real Orthanc (Debian package) on loopback, as the archive results go to, with its
DICOMweb plugin; REST helpers to see what it holds."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@dataclass
class Orthanc:
    workdir: Path
    dicom_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    ae_title: str = "ORTHANC"
    #: HTTP Basic users (name: password): the REST API and DICOMweb then ask for one;
    #: this helper signs in as the first.
    users: dict[str, str] | None = None

    def _open(self, request: urllib.request.Request | str, timeout: float) -> Any:
        if isinstance(request, str):
            request = urllib.request.Request(request)
        if self.users:
            name, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{name}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return urllib.request.urlopen(request, timeout=timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> Orthanc:
        storage = self.workdir / "storage"
        config = {
            "Name": "ainode-test-archive", "DicomAet": self.ae_title, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users or {}, "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True, "HttpServerEnabled": True, "StorageCompression": False,
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.workdir / "orthanc.json"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode}: see {self.workdir / 'orthanc.log'}")
            try:
                self.get("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None

    def get(self, path: str) -> Any:
        with self._open(self.url + path, timeout=10) as response:
            data = response.read()
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def upload(self, paths: list[Path]) -> None:
        """Store files in the archive over its REST API (as if sent earlier)."""
        for path in paths:
            request = urllib.request.Request(self.url + "/instances", data=path.read_bytes(), method="POST",
                                             headers={"Content-Type": "application/dicom"})
            with self._open(request, timeout=30) as response:
                assert response.status == 200

    def knows(self, name: str, ae_title: str, port: int) -> None:
        """Make a DICOM node on loopback known to the archive (a C-MOVE destination)."""
        request = urllib.request.Request(self.url + f"/modalities/{name}", method="PUT", data=json.dumps(
            {"AET": ae_title, "Host": "127.0.0.1", "Port": port}).encode())
        self._open(request, timeout=10).close()

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance with its main tags."""
        return [self.get(f"/instances/{i}") | {"Tags": self.get(f"/instances/{i}/simplified-tags")}
                for i in self.get("/instances")]

    def download(self, instance_id: str, path: Path) -> Path:
        path.write_bytes(self.get(f"/instances/{instance_id}/file"))
        return path
