"""Asking the carriers for quotes (oms/shipping.py `quotes_for`) against the local fake of SF
Express: a transient failure (SF's A1005/A1099, a reset connection) is asked again before SF
is left out of the choice; a refusal is not asked again."""

from __future__ import annotations

import socket
import struct
import threading
import urllib.request

from pydantic import SecretStr

from connectors.carriers.base import Carrier
from connectors.carriers.sf_express import SfExpress
from connectors.carriers.testing import shipment_request
from connectors.outbound import TransientFailure, urllib_transport
from oms.shipping import asking_again, quotes_for
from tests.connectors.carriers.fake_sf import CHECK_WORD, MONTHLY_CARD, PARTNER_ID, FakeSf, fake_sf


def sf_client(fake: FakeSf) -> dict[str, Carrier]:
    return {
        "sf": SfExpress(
            partner_id=PARTNER_ID,
            check_word=SecretStr(CHECK_WORD),
            monthly_card=MONTHLY_CARD,
            api_url=fake.url,
        )
    }


def test_a_transient_failure_is_asked_again_and_the_quote_is_kept() -> None:
    pauses: list[float] = []
    with fake_sf() as fake:
        calm, _ = quotes_for(shipment_request(), sf_client(fake), sleep=pauses.append)
        asked = fake.service_codes().count("EXP_RECE_QUERY_DELIVERTM")
        fake.fail_next[:] = [("api", "A1099"), ("api", "A1005")]
        quotes, failed = quotes_for(
            shipment_request(), sf_client(fake), pauses_s=(0.2, 1.0), sleep=pauses.append
        )
        again = fake.service_codes().count("EXP_RECE_QUERY_DELIVERTM") - asked
    assert calm and failed == {}
    assert quotes == calm  # the same answer as on a calm day
    assert pauses == [0.2, 1.0]
    assert again == asked + 2  # the two failed questions were asked again


def test_a_carrier_failing_every_time_is_left_out_with_why() -> None:
    pauses: list[float] = []
    with fake_sf() as fake:
        fake.fail_next[:] = [("api", "A1099")] * 3
        quotes, failed = quotes_for(
            shipment_request(), sf_client(fake), pauses_s=(0.0, 0.0), sleep=pauses.append
        )
    assert quotes == []
    assert set(failed) == {"sf"} and "A1099" in failed["sf"] and "asked 3 times" in failed["sf"]
    assert pauses == [0.0, 0.0]


def test_a_refusal_is_not_asked_again() -> None:
    pauses: list[float] = []
    with fake_sf() as fake:
        fake.fail_next[:] = [("biz", "1010")]
        quotes, failed = quotes_for(shipment_request(), sf_client(fake), sleep=pauses.append)
        asked = fake.service_codes().count("EXP_RECE_QUERY_DELIVERTM")
    assert pauses == [] and asked == 1
    assert quotes == [] and set(failed) == {"sf"} and "1010" in failed["sf"]


def test_a_reset_connection_is_asked_again() -> None:
    """The CI's failure: the fake listened with http.server's backlog of 5 and a wave's 16
    threads got "Connection reset by peer". The first question here goes to a listener that
    resets the connection (SO_LINGER 0), through the client's own transport."""
    listener = socket.create_server(("127.0.0.1", 0))
    resetting = f"http://127.0.0.1:{listener.getsockname()[1]}/std/service"

    def reset_one() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()

    threading.Thread(target=reset_one, daemon=True).start()
    pauses: list[float] = []
    seen: list[str] = []
    with fake_sf() as fake, listener:
        clients = sf_client(fake)
        sf = clients["sf"]
        assert isinstance(sf, SfExpress)

        def first_to_the_resetter(request: urllib.request.Request) -> tuple[int, bytes]:
            if not seen:
                request.full_url = resetting
            try:
                return urllib_transport(request)
            except TransientFailure as exc:
                seen.append(str(exc))
                raise

        sf.transport = first_to_the_resetter
        quotes, failed = quotes_for(shipment_request(), clients, sleep=pauses.append)
    assert len(seen) == 1 and "reset" in seen[0].lower()
    assert quotes and failed == {} and len(pauses) == 1


def test_a_label_whose_purchase_failed_transiently_is_bought_once() -> None:
    """The label is asked for again after SF's A1099; SF is asked to create the order twice
    and there is one shipment (the carriers hold to one per reference)."""
    pauses: list[float] = []
    with fake_sf() as fake:
        sf = sf_client(fake)["sf"]
        request = shipment_request()
        service = sf.quote(request)[0].service
        fake.fail_next[:] = [("api", "A1099")]
        shipment = asking_again(
            "the label", lambda: sf.create(request, service), sleep=pauses.append
        )
        creates = fake.service_codes().count("EXP_RECE_CREATE_ORDER")
        orders = dict(fake.orders)
    assert pauses == [0.2] and creates == 2
    assert list(orders) == [request.reference]
    assert shipment.reference == request.reference and shipment.tracking_number
