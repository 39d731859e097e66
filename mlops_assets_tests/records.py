"""A valid transactions record as a feed sends it (text fields), for tests to vary."""

TRANSACTION = {
    "transaction_id": "t1",
    "event_time": "2026-01-02T10:00:00Z",
    "card_id": "card_1",
    "merchant_id": "m_1",
    "merchant_category": "grocery",
    "amount": "12.50",
    "currency": "EUR",
    "country": "DE",
    "card_country": "DE",
    "channel": "pos",
    "entry_mode": "chip",
    "device_type": "terminal",
    "device_id": "dev_1",
}


def transaction(**changes: str) -> dict[str, str]:
    """The valid record with some fields changed (or added)."""
    return {**TRANSACTION, **changes}
