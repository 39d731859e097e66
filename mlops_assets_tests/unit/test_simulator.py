"""Unit tests of the seeded card-transaction simulator and its landing files."""

import datetime
import json
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from mlops_assets.simulate import (
    ADDED_COLUMN,
    CATEGORIES,
    CHANNELS,
    COUNTRIES,
    DEVICE_TYPES,
    ENTRY_MODES,
    LABEL_COLUMNS,
    REQUIRED_COLUMNS,
    TIMESTAMP_FORMAT,
    TRANSACTION_COLUMNS,
    DayManifest,
    DirtyData,
    Drift,
    Scenario,
    clear_caches,
    generate_day,
    simulate,
)

CURRENCY = {"GB": "GBP", "US": "USD", "PL": "PLN", "CH": "CHF", "SE": "SEK"}


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, TIMESTAMP_FORMAT)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def data_lines(blob: bytes) -> tuple[str, list[bytes]]:
    assert blob.endswith(b"\n") and not blob.endswith(b"\n\n")
    header, *lines = blob[:-1].split(b"\n")
    return header.decode(), lines


def day_lines(root: Path, manifest: DayManifest) -> tuple[str, list[bytes]]:
    headers, lines = set(), []
    for rel in manifest.files:
        if rel.startswith("transactions/"):
            header, part = data_lines((root / rel).read_bytes())
            headers.add(header)
            lines += part
    assert len(headers) == 1
    return headers.pop(), lines


def classify(line: bytes, header: list[str]) -> str:
    """Recount a line's defect from its text alone, as an ingestion would."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "malformed"
    fields = text.split(",")
    if len(fields) != len(header):
        return "malformed"
    row = dict(zip(header, fields, strict=True))
    if any(row[c] == "" for c in REQUIRED_COLUMNS):
        return "missing_field"
    try:
        float(row["amount"])
        parse_time(row["event_time"])
    except ValueError:
        return "wrong_type"
    return "valid"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    scenario = Scenario.demo(days=5, transactions_per_day=4_000, seed=3, files_per_day=2)
    root = tmp_path_factory.mktemp("landing")
    return scenario, root, simulate(scenario, root)


def test_same_scenario_gives_byte_identical_files(demo, tmp_path):
    scenario, root, _ = demo
    clear_caches()
    simulate(scenario, tmp_path)
    assert read_tree(tmp_path) == read_tree(root)


def test_a_day_alone_equals_that_day_of_the_full_run(demo, tmp_path):
    scenario, root, manifests = demo
    clear_caches()
    for day in (4, 1):  # 4 has next-day duplicates from day 3; 1 from day 0
        (alone,) = simulate(scenario, tmp_path, days=[day])
        assert alone == manifests[day]
        for rel in [*alone.files, f"_manifests/{alone.date}.json"]:
            assert (tmp_path / rel).read_bytes() == (root / rel).read_bytes(), rel
    batch = generate_day(scenario, 2)
    assert batch.transaction_files == tuple((root / f).read_bytes() for f in manifests[2].files[:2])


def test_different_seeds_differ():
    a = generate_day(Scenario.clean(transactions_per_day=500, seed=1), 0)
    b = generate_day(Scenario.clean(transactions_per_day=500, seed=2), 0)
    assert a.transaction_files != b.transaction_files


def test_landing_layout_and_manifest_json(demo):
    scenario, root, manifests = demo
    assert len(manifests) == scenario.days
    for day, manifest in enumerate(manifests):
        iso = scenario.date_of(day).isoformat()
        assert manifest.files == (
            f"transactions/{iso}/transactions_{iso}_000.csv",
            f"transactions/{iso}/transactions_{iso}_001.csv",
            f"labels/{iso}/labels_{iso}_000.csv",
        )
        path = root / "_manifests" / f"{iso}.json"
        assert DayManifest.read(path) == manifest
        data = json.loads(path.read_text())
        assert data["date"] == iso
        for key in (
            "files", "transaction_lines", "label_lines", "fraud_count", "malformed",
            "wrong_type", "missing_field", "duplicate_same_day", "duplicate_next_day",
            "late_events", "added_column",
        ):  # fmt: skip
            assert key in data, key
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_clean_lines_have_the_contract_format():
    scenario = Scenario.clean(days=2, transactions_per_day=3_000, seed=5)
    ids = set()
    for day in range(scenario.days):
        batch = generate_day(scenario, day)
        header, lines = data_lines(batch.transaction_files[0])
        assert header == ",".join(TRANSACTION_COLUMNS)
        assert len(lines) == batch.transaction_lines == scenario.transactions_per_day
        date = scenario.date_of(day)
        hours = Counter()
        for raw in lines:
            row = dict(zip(TRANSACTION_COLUMNS, raw.decode().split(","), strict=True))
            assert re.fullmatch(rf"tx_{date:%Y%m%d}_\d{{13}}", row["transaction_id"])
            assert re.fullmatch(r"\d+\.\d\d", row["amount"]) and float(row["amount"]) > 0
            event_time = parse_time(row["event_time"])
            assert event_time.date() == date
            hours[event_time.hour] += 1
            assert re.fullmatch(r"card_\d{6}", row["card_id"])
            assert re.fullmatch(r"m_\d{5}", row["merchant_id"])
            assert row["merchant_category"] in CATEGORIES[:12]
            assert row["country"] in COUNTRIES and row["card_country"] in COUNTRIES
            assert row["currency"] == CURRENCY.get(row["country"], "EUR")
            assert row["channel"] in CHANNELS
            assert row["entry_mode"] in (*ENTRY_MODES, "")
            assert row["device_type"] in DEVICE_TYPES
            assert row["device_id"] == "" or re.fullmatch(r"dev_\d{13}", row["device_id"])
            ids.add(row["transaction_id"])
        assert sum(hours[h] for h in range(2, 5)) < sum(hours[h] for h in range(12, 15)) / 5
    assert len(ids) == scenario.days * scenario.transactions_per_day


def test_fraud_share_is_realistic_on_a_clean_scenario():
    scenario = Scenario.clean(days=3, transactions_per_day=20_000)
    for day in range(scenario.days):
        batch = generate_day(scenario, day)
        assert 0.005 <= batch.fraud_count / batch.transaction_events <= 0.02
        assert len(set(batch.fraud_transaction_ids)) == batch.fraud_count


def test_manifest_counts_match_a_recount_of_the_file_text(demo):
    scenario, root, manifests = demo
    previous: set[bytes] = set()
    for manifest in manifests:
        header_text, lines = day_lines(root, manifest)
        header = header_text.split(",")
        kinds = Counter(classify(line, header) for line in lines)
        invalid_utf8 = 0
        for line in lines:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                invalid_utf8 += 1
        seen: set[bytes] = set()
        same = nxt = late = 0
        valid_ids = set()
        for line in lines:
            if classify(line, header) != "valid":
                continue
            row = dict(zip(header, line.decode().split(","), strict=True))
            if line in previous:
                nxt += 1
            elif line in seen:
                same += 1
            elif parse_time(row["event_time"]).date() < manifest.date:
                late += 1
            seen.add(line)
            if row["transaction_id"].startswith(f"tx_{manifest.date:%Y%m%d}_"):
                valid_ids.add(row["transaction_id"])
        assert len(lines) == manifest.transaction_lines
        assert kinds["malformed"] == manifest.malformed > 0
        assert invalid_utf8 == manifest.invalid_utf8 > 0
        assert kinds["wrong_type"] == manifest.wrong_type > 0
        assert kinds["missing_field"] == manifest.missing_field > 0
        assert same == manifest.duplicate_same_day > 0
        assert nxt == manifest.duplicate_next_day
        assert late == manifest.late_events > 0
        assert len(valid_ids) == manifest.valid_transactions
        assert manifest.quarantined == manifest.malformed + manifest.wrong_type + (
            manifest.missing_field
        )
        previous = set(lines)
    # Day 3 adds a column, so no verbatim line can cross from day 2; other days get some.
    assert [m.duplicate_next_day > 0 for m in manifests] == [False, True, True, False, True]


def test_dirty_ids_name_the_quarantined_events():
    scenario = Scenario.demo(days=1, transactions_per_day=3_000)
    batch = generate_day(scenario, 0)
    assert len(batch.transaction_ids_wrong_type) == batch.wrong_type
    text = b"\n".join(batch.transaction_records())
    for tx_id in batch.transaction_ids_wrong_type:
        assert text.count(tx_id.encode()) == 1
    fraud = set(batch.fraud_transaction_ids)
    dirty = {
        *batch.transaction_ids_malformed,
        *batch.transaction_ids_wrong_type,
        *batch.transaction_ids_missing_field,
    }
    assert not fraud & dirty


def test_added_column_appears_from_its_day(demo):
    scenario, root, manifests = demo
    for day, manifest in enumerate(manifests):
        header, _ = day_lines(root, manifest)
        expected = list(TRANSACTION_COLUMNS) + ([ADDED_COLUMN] if day >= 3 else [])
        assert header.split(",") == expected
        assert manifest.added_column is (day >= 3)


def test_labels_follow_fraud_within_the_delay_window():
    scenario = Scenario.clean(days=6, transactions_per_day=5_000, label_delay_days=(1, 3))
    batches = [generate_day(scenario, d) for d in range(scenario.days)]
    cards = {}
    for batch in batches:
        for raw in batch.transaction_records():
            fields = raw.decode().split(",")
            cards[fields[0]] = fields[2]
    labelled_fraud, disputes = set(), 0
    for batch in batches:
        header, lines = data_lines(batch.label_file)
        assert header == ",".join(LABEL_COLUMNS)
        assert len(lines) == batch.label_lines
        for raw in lines:
            tx_id, card_id, reported_at, reason, is_fraud = raw.decode().split(",")
            tx_date = datetime.datetime.strptime(tx_id[3:11], "%Y%m%d").date()
            assert parse_time(reported_at).date() == batch.date
            assert 1 <= (batch.date - tx_date).days <= 3
            assert cards[tx_id] == card_id
            if is_fraud == "1":
                assert reason in ("fraud_card_not_present", "fraud_card_present")
                labelled_fraud.add(tx_id)
            else:
                assert is_fraud == "0"
                assert reason in ("merchandise_not_received", "duplicate_processing")
                disputes += 1
    assert batches[0].label_lines == 0
    # Days 0-2 are fully labelled by day 5; later chargebacks are not reported yet.
    settled = {i for b in batches[:3] for i in b.fraud_transaction_ids}
    assert settled <= labelled_fraud
    assert labelled_fraud <= {i for b in batches for i in b.fraud_transaction_ids}
    assert 0 < disputes < 0.003 * sum(b.transaction_events for b in batches)


def test_stale_parts_are_removed_when_files_per_day_shrinks(tmp_path):
    scenario = Scenario.clean(days=1, transactions_per_day=900, files_per_day=3)
    (three,) = simulate(scenario, tmp_path)
    lines = day_lines(tmp_path, three)[1]
    (one,) = simulate(Scenario.clean(days=1, transactions_per_day=900), tmp_path)
    day_dir = tmp_path / "transactions" / one.date.isoformat()
    assert sorted(p.name for p in day_dir.iterdir()) == [Path(one.files[0]).name]
    assert day_lines(tmp_path, one)[1] == lines


def parsed(batch, fraud: bool) -> list[dict[str, str]]:
    header, lines = data_lines(batch.transaction_files[0])
    ids = set(batch.fraud_transaction_ids)
    rows = []
    for raw in lines:
        try:
            fields = raw.decode().split(",")
        except UnicodeDecodeError:
            continue
        if len(fields) == len(header.split(",")) and (fields[0] in ids) == fraud:
            rows.append(dict(zip(header.split(","), fields, strict=False)))
    return rows


def amount(row: dict[str, str]) -> float:
    try:
        return float(row["amount"])
    except ValueError:
        return 0.0


def test_drifted_preset_shifts_amounts_categories_and_fraud_pattern():
    scenario = Scenario.drifted(days=4, transactions_per_day=10_000)
    assert scenario.drift.covariate_from_day == scenario.drift.concept_from_day == 2
    before, after = generate_day(scenario, 1), generate_day(scenario, 2)

    legit_before, legit_after = parsed(before, False), parsed(after, False)
    median_before = statistics.median(amount(r) for r in legit_before)
    assert statistics.median(amount(r) for r in legit_after) > 1.4 * median_before

    def share(rows, cats):
        return sum(r["merchant_category"] in cats for r in rows) / len(rows)

    boosted = {"online_retail", "travel", "electronics"}
    assert share(legit_after, boosted) > share(legit_before, boosted) + 0.08

    def testing_share(rows):
        return sum(amount(r) <= 15 and r["channel"] == "pos" for r in rows) / len(rows)

    fraud_before, fraud_after = parsed(before, True), parsed(after, True)
    assert testing_share(fraud_before) < 0.05
    assert testing_share(fraud_after) > 0.6
    online = sum(r["channel"] == "online" for r in fraud_before) / len(fraud_before)
    assert online > 0.6
    assert 0.005 <= after.fraud_count / after.transaction_events <= 0.02


def test_fraud_differs_from_legit_behaviour_before_drift():
    batch = generate_day(Scenario.clean(days=1, transactions_per_day=20_000), 0)
    fraud, legit = parsed(batch, True), parsed(batch, False)

    def rate(rows, pred):
        return sum(map(pred, rows)) / len(rows)

    def foreign(r):
        return r["country"] != r["card_country"]

    def night(r):
        return parse_time(r["event_time"]).hour < 6

    assert rate(fraud, foreign) > 0.5 > 0.2 > rate(legit, foreign) > 0.02
    assert rate(fraud, night) > 0.25 > 0.1 > rate(legit, night)
    fraud_median = statistics.median(map(amount, fraud))
    assert fraud_median > 3 * statistics.median(map(amount, legit))


def test_new_categories_appear_from_their_day():
    scenario = Scenario.clean(
        days=2, transactions_per_day=5_000, drift=Drift(new_categories_from_day=1)
    )
    new = {"crypto_exchange", "bnpl_marketplace"}
    day0 = parsed(generate_day(scenario, 0), False)
    day1 = parsed(generate_day(scenario, 1), False)
    assert not any(r["merchant_category"] in new for r in day0)
    share = sum(r["merchant_category"] in new for r in day1) / len(day1)
    assert 0.03 < share < 0.07


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError):
        DirtyData(malformed_rate=1.5)
    with pytest.raises(ValueError):
        Scenario(label_delay_days=(3, 1))
    with pytest.raises(ValueError):
        generate_day(Scenario.clean(days=2), 2)


def card_of(batch) -> dict[str, str]:
    """Transaction id to card id over a day's valid lines."""
    header = batch.transaction_header.split(",")
    out = {}
    for raw in batch.transaction_records():
        if classify(raw, header) == "valid":
            fields = raw.decode().split(",")
            out[fields[0]] = fields[2]
    return out


def test_new_cards_arrive_every_day_and_are_never_seen_before():
    scenario = Scenario.demo(days=4, transactions_per_day=4_000, seed=3)
    ordinary, fraud_cards = scenario.new_cards_per_day
    assert (ordinary, fraud_cards) == (20, 5)  # 0.5 % of 4,000; a fifth of first uses fraud
    seen: set[str] = set()
    for day in range(scenario.days):
        batch = generate_day(scenario, day)
        cards = card_of(batch)
        new = set(batch.new_card_ids)
        assert len(new) == batch.new_cards == ordinary + fraud_cards
        assert batch.new_card_fraud == fraud_cards
        assert not new & seen  # never seen on an earlier day
        assert all(int(c[5:]) >= scenario.n_cards for c in new)
        assert {c for c in cards.values() if int(c[5:]) >= scenario.n_cards} == new
        by_new = [tx for tx, card in cards.items() if card in new]
        assert len(by_new) == batch.new_card_transactions
        fraud = set(batch.fraud_transaction_ids)
        assert sum(tx in fraud for tx in by_new) == batch.new_card_fraud_transactions
        # Ordinary new cards transact once (their first); the others carry a whole burst.
        per_card = Counter(card for card in cards.values() if card in new)
        fraud_cards_seen = {cards[tx] for tx in by_new if tx in fraud}
        assert len(fraud_cards_seen) == fraud_cards
        assert all(per_card[c] == 1 for c in new - fraud_cards_seen)
        burst_rows = sum(per_card[c] for c in fraud_cards_seen)
        assert burst_rows == batch.new_card_fraud_transactions > fraud_cards
        seen |= set(cards.values())


def test_new_cards_leave_every_other_field_as_it_was():
    base = {"days": 2, "transactions_per_day": 3_000, "seed": 11}
    without = Scenario.demo(new_card_rate=0.0, **base)
    with_new = Scenario.demo(**base)
    for day in range(2):
        a, b = generate_day(without, day), generate_day(with_new, day)
        assert a.new_cards == 0 and a.new_card_ids == ()
        assert (a.fraud_count, a.label_lines, a.quarantined) == (
            b.fraud_count,
            b.label_lines,
            b.quarantined,
        )
        lines_a, lines_b = a.transaction_records(), b.transaction_records()
        assert len(lines_a) == len(lines_b)
        changed = 0
        for la, lb in zip(lines_a, lines_b, strict=True):
            if la != lb:
                fa, fb = la.split(b","), lb.split(b",")
                assert fa[:2] + fa[3:] == fb[:2] + fb[3:]  # only the card id differs
                assert fb[2].decode() in b.new_card_ids
                changed += 1
        assert changed == b.new_card_transactions > 0


def test_labels_name_the_new_card_a_fraud_burst_used():
    scenario = Scenario.clean(days=5, transactions_per_day=4_000, label_delay_days=(1, 2))
    batches = [generate_day(scenario, d) for d in range(scenario.days)]
    cards = {tx: card for b in batches for tx, card in card_of(b).items()}
    labelled_new = 0
    for batch in batches:
        for raw in batch.label_records():
            tx_id, card_id, *_ = raw.decode().split(",")
            assert cards[tx_id] == card_id
            labelled_new += int(card_id[5:]) >= scenario.n_cards
    assert labelled_new > 0


def test_first_transactions_of_new_cards_are_fraud_more_often():
    scenario = Scenario.clean(days=6, transactions_per_day=4_000, seed=9)
    first_fraud = first = fraud = events = 0
    for day in range(scenario.days):
        batch = generate_day(scenario, day)
        cards = card_of(batch)
        fraud_ids = set(batch.fraud_transaction_ids)
        firsts: dict[str, str] = {}
        for raw in batch.transaction_records():
            fields = raw.decode().split(",")
            if fields[2] in batch.new_card_ids:
                earlier = firsts.get(fields[2])
                if earlier is None or fields[1] < earlier.split("|")[0]:
                    firsts[fields[2]] = f"{fields[1]}|{fields[0]}"
        assert len(firsts) == batch.new_cards and set(firsts) <= set(cards.values())
        first += len(firsts)
        first_fraud += sum(v.split("|")[1] in fraud_ids for v in firsts.values())
        fraud += batch.fraud_count
        events += batch.transaction_events
    # About fraud_rate * uplift = 20 % of first uses, against about 1 % overall.
    assert 0.1 < first_fraud / first < 0.3
    assert first_fraud / first > 10 * fraud / events


def test_new_card_settings_are_checked():
    with pytest.raises(ValueError, match="new_card_rate"):
        Scenario(new_card_rate=0.5)
    with pytest.raises(ValueError, match="new_card_fraud_uplift"):
        Scenario(new_card_fraud_uplift=0.5)
    assert Scenario.clean(new_card_rate=0.0, transactions_per_day=1_000).new_cards_per_day == (
        0,
        0,
    )
    assert Scenario.clean(fraud_rate=0.0, transactions_per_day=1_000).new_cards_per_day == (5, 0)
