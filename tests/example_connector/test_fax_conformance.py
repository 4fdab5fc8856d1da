"""What a connector author writes: one import, one class."""

from pathlib import Path

from orderstream_fax import FaxConnector

from connectors.testing import ConnectorConformance


class TestFaxConformance(ConnectorConformance):
    connector = FaxConnector()
    fixtures = Path(__file__).parent / "fixtures"
    bad_payloads = [(b'{"fax_id": "F", "received": "yesterday", "sender": "x", "phone": "1", '
                     b'"lines": [], "total": "0"}', "received")]  # fmt: skip
