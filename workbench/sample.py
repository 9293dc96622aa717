"""The bundled sample data set: deterministic, realistic, and messy the way real exports are.

    workbench demo-data --rows 3000 --out data/sample

Customer-support messages with an intent label (6 classes), a reference reply and group attributes
(``region``, ``age_band``); an unlabeled pool for annotators; a knowledge-base corpus for continued
pre-training; customer attribute snapshots for the feature store. The same seed gives byte-identical
files on any machine. It scales to millions of rows (vectorised with numpy, written in chunks).

The mess, planted on purpose (``BIAS.md`` in the output folder lists it with counts):
exact duplicates with case/whitespace noise, near duplicates, empty and null fields, unparseable
timestamps, unknown and missing labels, malformed CSV and JSONL lines, non-UTF-8 bytes, very long
rows, e-mail addresses / phone numbers / card numbers (PII).

The intent task is realistically hard, not a template lookup (``Hardness``; counts in ``BIAS.md``):
besides clear messages, messages whose words overlap another intent's, messages that mention two
intents (a neighbouring intent's situation and the actual request; or two requests, labeled with the
first or, for 30% of them, the second), short vague messages ("Still no refund.", "Any update on order
#123?"), and label noise: 5% of labels are a plausible neighbouring intent (billing <-> refund, ...), as in
real annotation. Replies answer the intent the customer meant. A fine-tuned MiniLM scores about 0.8 test
accuracy on it (majority baseline about 0.22); ``workbench demo-data --easy`` gives the old separable task.

The planted bias: age band ``65+`` is about 4% of the messages (25% expected in the customer base) and
its intent mix is skewed: ``refund`` about 5% of its messages against about 21% for everybody else,
``technical_issue`` and ``account_access`` far more common.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

INTENTS = ["billing", "refund", "shipping", "technical_issue", "account_access", "cancellation"]
REGIONS = ["north", "south", "east", "west"]
AGE_BANDS = ["18-29", "30-44", "45-64", "65+"]
CHANNELS = ["email", "chat", "phone_transcript"]

# Intent mix for the general population and for the under-represented 65+ band (the planted bias).
INTENT_P = np.array([0.22, 0.21, 0.20, 0.15, 0.12, 0.10])
INTENT_P_65 = np.array([0.15, 0.05, 0.12, 0.35, 0.25, 0.08])
AGE_P = np.array([0.30, 0.35, 0.31, 0.04])
REGION_P = np.array([0.28, 0.24, 0.26, 0.22])
REFERENCE_AGE_SHARES = {"18-29": 0.25, "30-44": 0.25, "45-64": 0.25, "65+": 0.25}

PRODUCTS = ["router", "smart speaker", "laptop", "phone case", "headphones", "monitor", "keyboard",
            "coffee maker", "e-reader", "fitness watch", "printer", "webcam"]
SHIP = ["FedEx", "UPS", "DHL", "the post"]

# Several phrasings per intent; {p} product, {o} order number, {a} amount, {d} days, {s} carrier.
MESSAGES = {
    "billing": [
        "I was charged twice for my {p} order #{o}, can you check my invoice?",
        "Why is there an extra fee of ${a} on my bill this month?",
        "My invoice for order #{o} shows the wrong amount, I expected ${a}.",
        "Can you explain the charge of ${a} on my statement? I don't recognise it.",
        "The payment for my subscription went through but the invoice still says unpaid.",
        "I need a copy of the invoice for order #{o} for my company expenses.",
        "You billed my card ${a} but the {p} was on sale for less.",
    ],
    "refund": [
        "I returned the {p} {d} days ago and still have not received my refund.",
        "Please refund order #{o}, the {p} arrived broken.",
        "How long does a refund take? I sent back the {p} last week.",
        "I want my money back for the {p}, it does not work as advertised.",
        "The refund of ${a} for order #{o} never reached my account.",
        "Can I get a refund instead of a replacement for the {p}?",
        "I cancelled order #{o} before it shipped, when will the ${a} be refunded?",
    ],
    "shipping": [
        "Where is my package? Order #{o} was supposed to arrive {d} days ago.",
        "The tracking for my {p} has not updated since it left the {s} depot.",
        "Can I change the delivery address for order #{o}?",
        "My {p} was delivered to the wrong address, {s} says it was left at the door.",
        "Do you ship to my area and how long does delivery take with {s}?",
        "The parcel with my {p} is stuck in customs, what should I do?",
        "Order #{o} shows delivered but I never got the package.",
    ],
    "technical_issue": [
        "My {p} keeps disconnecting from wifi every few minutes.",
        "The {p} will not turn on after the latest update.",
        "I get an error code E{d} when I try to set up the {p}.",
        "The app crashes every time I open the settings for my {p}.",
        "My {p} is making a strange noise and the screen flickers.",
        "The firmware update failed halfway and now the {p} is stuck.",
        "Bluetooth pairing with the {p} fails on my phone.",
    ],
    "account_access": [
        "I cannot log in to my account, the password reset email never arrives.",
        "My account is locked after too many login attempts.",
        "How do I change the email address on my account?",
        "Two-factor authentication codes are not reaching my phone, I am locked out.",
        "Someone may have accessed my account, I see an order #{o} I did not place.",
        "I forgot my username and cannot sign in to check order #{o}.",
        "The login page says my account does not exist but I have ordered before.",
    ],
    "cancellation": [
        "Please cancel my subscription before the next billing date.",
        "I want to cancel order #{o}, I ordered the {p} by mistake.",
        "How do I close my account and cancel all plans?",
        "Cancel my membership please, I no longer need the service.",
        "Can I still cancel order #{o} or has the {p} already shipped?",
        "Stop my monthly plan, I am moving to another provider.",
        "I would like to end my contract and cancel the {p} protection plan.",
    ],
}
REPLIES = {
    "billing": "Thanks for reaching out about your bill. I have reviewed order #{o} and corrected the "
               "charge; the updated invoice is in your account.",
    "refund": "Sorry about the trouble with your {p}. I have issued a refund of ${a}; it reaches your "
              "account within 5 business days.",
    "shipping": "Thanks for your patience. Your order #{o} is with {s}; I have opened a trace and will "
                "update you within 24 hours.",
    "technical_issue": "Sorry the {p} is giving you trouble. Please restart it and install the latest "
                       "firmware; if that does not help, we will replace it.",
    "account_access": "I have reset the access to your account and sent a secure sign-in link to your "
                      "email. Please change your password after signing in.",
    "cancellation": "Your cancellation is confirmed. You will not be charged again, and order #{o} has "
                    "been closed.",
}
# --------------------------------------------------------------------------- what makes the task hard
# Real support traffic is not one clean template per intent. Besides the clear messages above, the
# generator writes messages that mention two intents (a situation of one, a request of another; or two
# requests), short vague messages (some fit any intent), and labels with annotation noise.

# Plausible confusions: a noisy label, and the situation mentioned beside a request, come from here.
NEIGHBOURS = {
    "billing": ["refund", "cancellation", "account_access"],
    "refund": ["billing", "shipping", "cancellation"],
    "shipping": ["refund", "cancellation", "technical_issue"],
    "technical_issue": ["account_access", "refund", "shipping"],
    "account_access": ["technical_issue", "billing", "cancellation"],
    "cancellation": ["billing", "refund", "shipping"],
}
# Clear messages whose vocabulary overlaps another intent's (a bag of keywords gets them wrong).
OVERLAPPING = {
    "billing": ["After I cancelled I was still charged ${a}, please correct the invoice.",
                "The refund came through but my bill still lists the ${a} fee.",
                "My account shows a payment of ${a} for order #{o} that I did not make twice."],
    "refund": ["The {p} never arrived, so I want a refund of ${a}.",
               "I was charged for a {p} I sent back, please return the ${a}.",
               "Order #{o} was cancelled by you, I want the ${a} back on my card."],
    "shipping": ["Order #{o} was charged {d} days ago but never shipped, when will it arrive?",
                 "My replacement {p} has not been sent yet, what is the delivery date?",
                 "Order #{o} is paid and my account says shipped, but {s} has no record of it."],
    "technical_issue": ["I cannot log in to the {p} app, it shows error E{d}.",
                        "The {p} delivered yesterday will not connect to wifi.",
                        "Since the update my account page on the {p} shows a blank screen."],
    "account_access": ["I was charged but cannot get into my account to see the invoice.",
                       "The app says my account is cancelled but I never cancelled it, and I cannot sign in.",
                       "My order #{o} confirmation went to an old email, how do I update my login?"],
    "cancellation": ["Cancel order #{o}, the delivery takes too long.",
                     "Please cancel before you charge my card again next month.",
                     "The {p} keeps breaking, I want to end the protection plan now."],
}
# Two-intent messages: the situation (a statement) of one intent and the request of another.
SITUATIONS = {
    "billing": ["I was charged ${a} for it", "my last invoice was ${a}", "the payment of ${a} went through twice"],
    "refund": ["I already sent the {p} back", "I was promised a refund last week", "I returned it {d} days ago"],
    "shipping": ["the {p} arrived {d} days late", "{s} lost the first parcel", "the package finally came"],
    "technical_issue": ["the {p} stopped working after a day", "the {p} keeps crashing",
                        "the {p} shows error E{d}"],
    "account_access": ["I could not log in for a week", "my account got locked", "the password reset never came"],
    "cancellation": ["I cancelled my plan last month", "I asked you to cancel order #{o}",
                     "I ended my membership"],
}
REQUESTS = {
    "billing": ["why was I charged ${a}?", "please fix my invoice", "can you explain the extra charge?",
                "I need a corrected bill"],
    "refund": ["I want my money back", "please refund the ${a}", "when do I get my refund?",
               "can I get a refund?"],
    "shipping": ["where is order #{o}?", "when will it be delivered?", "can you track the package?",
                 "please send it to my new address"],
    "technical_issue": ["how do I get it working again?", "can you help me fix the {p}?", "is there a fix for this?",
                        "what do I do about the error?"],
    "account_access": ["please help me get back into my account", "how do I reset my password?",
                       "can you unlock my account?", "I need to sign in"],
    "cancellation": ["please cancel my subscription", "I want to cancel order #{o}",
                     "stop all future payments and close my plan", "I would like to end my contract"],
}
TWO_INTENT_FORMS = ["{sit}, and {req}", "{Req} {sit}.", "{Sit}. {Req}", "{Sit}, so {req}", "{Req} ({sit})"]
DOUBLE_FORMS = ["{Req1} Also, {req2}", "{Req1} and {req2}", "Two things: {req1} and {req2}"]
# Short vague messages: some lean to one intent, the generic ones fit any of them.
VAGUE = {
    "billing": ["Wrong amount again.", "What is this ${a}?", "Bill is too high.", "Double charged??"],
    "refund": ["Where is my money?", "Still no refund.", "Money back please.", "Returned it, now what?"],
    "shipping": ["Not arrived yet.", "Where is it??", "Parcel missing.", "Tracking is stuck."],
    "technical_issue": ["It stopped working again.", "Broken after the update.", "Error again.",
                        "Does not turn on."],
    "account_access": ["Can't get in.", "Locked out again.", "Password not working.", "Login broken."],
    "cancellation": ["Stop it all.", "Cancel please.", "Don't want it anymore.", "End it."],
}
VAGUE_GENERIC = ["Any update on order #{o}?", "Still waiting for an answer about order #{o}.",
                 "I need help with order #{o}.", "This is about my {p}.", "Please call me back about order #{o}.",
                 "Something is wrong with order #{o}.", "Nobody replied to my last message about the {p}.",
                 "Can someone look into order #{o}?", "Not happy with the {p}, please sort it out.",
                 "Question about my account and order #{o}."]
STYLES = ["clear", "overlap", "two_intent", "two_requests", "vague", "vague_generic"]


@dataclass
class Hardness:
    """How hard the intent task is: message styles (shares of all messages) and label noise.

    ``clear`` messages get the share left over (0.59 by default). With the defaults a model that read
    every message perfectly would score about 0.89 against the labels (the ceiling: noisy labels,
    two-request messages labeled with the second request, generic messages); the MiniLM classifier
    of ``workbench run`` scores about 0.8. Documented in docs/schema.md and each sample's BIAS.md."""
    overlap: float = 0.10          # a clear request, but with words of another intent in it
    two_intent: float = 0.12       # a situation of a neighbouring intent + the request (label: the request)
    two_requests: float = 0.05     # two requests; annotators label the first one, or the second (below)
    second_request_label: float = 0.30  # share of two-request messages labeled with the second request
    vague: float = 0.08            # short, vague, but leaning to its intent ("Still no refund.")
    vague_generic: float = 0.06    # short and fitting any intent ("Any update on order #123?")
    label_noise: float = 0.05      # labels replaced by a neighbouring intent (annotation mistakes)

    @classmethod
    def easy(cls) -> "Hardness":
        """Every message clear, every label right (the old, trivially separable task)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def style_p(self) -> np.ndarray:
        rest = [self.overlap, self.two_intent, self.two_requests, self.vague, self.vague_generic]
        if min(rest) < 0 or sum(rest) > 1 or not 0 <= self.label_noise <= 1 \
                or not 0 <= self.second_request_label <= 1:
            raise ValueError(f"Hardness: shares must lie in [0, 1] and sum to at most 1, got {self}")
        return np.array([1 - sum(rest), *rest])


OPENERS = ["", "", "", "Hi, ", "Hello, ", "Hi there. ", "Good morning, ", "Hey, "]
CLOSERS = ["", "", "", " Thanks.", " Thank you!", " Please help.", " Regards.", " Thanks in advance."]
KB_TOPICS = {
    "billing": ["invoices", "payment methods", "extra fees", "subscriptions"],
    "refund": ["returns", "refund times", "damaged items", "replacements"],
    "shipping": ["delivery times", "tracking", "customs", "address changes"],
    "technical_issue": ["wifi setup", "firmware updates", "error codes", "bluetooth pairing"],
    "account_access": ["password reset", "two-factor authentication", "locked accounts", "email changes"],
    "cancellation": ["cancelling orders", "ending subscriptions", "closing accounts", "protection plans"],
}
KB_SENTENCES = [
    "This article explains {t} for the {p}.",
    "Most questions about {t} are answered in a few steps.",
    "First, open the account page and select {t}.",
    "If the {p} shows an error, restart it and wait two minutes.",
    "Customers usually see the change within {d} business days.",
    "Keep your order number ready when you contact support about {t}.",
    "The {p} supports automatic updates when it is connected to wifi.",
    "Refunds are sent to the original payment method.",
    "Deliveries with {s} can be tracked from the order page.",
    "For security, we never ask for your full password.",
    "You can change {t} settings at any time from the app.",
    "Contact support if {t} does not work after these steps.",
]


@dataclass
class Mess:
    """How much noise to plant (shares of the labeled messages)."""
    exact_dup: float = 0.06       # repeated messages with case/whitespace noise
    near_dup: float = 0.03        # same message with a small edit
    empty_text: float = 0.01
    null_intent: float = 0.01
    unknown_intent: float = 0.005
    bad_timestamp: float = 0.005
    pii: float = 0.08             # e-mail, phone or card number in the text
    long_text: float = 0.0005     # very long rows (about 30,000 characters)
    case_noise: float = 0.15      # intent label with stray case/whitespace
    bad_lines_per_100k: int = 300  # malformed CSV/JSONL lines and non-UTF-8 rows


def _slots(n: int, rng: np.random.Generator) -> list[dict]:
    """Slot values per message (product, order, amount, days, carrier), shared by message and reply."""
    p = rng.integers(0, len(PRODUCTS), n)
    o = rng.integers(100000, 999999, n)
    a = rng.integers(5, 400, n)
    d = rng.integers(2, 30, n)
    s = rng.integers(0, len(SHIP), n)
    return [dict(p=PRODUCTS[pi], o=oi, a=ai, d=di, s=SHIP[si]) for pi, oi, ai, di, si in zip(p, o, a, d, s)]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _body(style: int, name: str, other: str, t1: int, t2: int, t3: int, slots: dict) -> str:
    """One message body of a style (``STYLES``) for intent ``name``; ``other`` is a neighbouring intent."""
    if style == 0:
        return MESSAGES[name][t1 % len(MESSAGES[name])].format(**slots)
    if style == 1:
        return OVERLAPPING[name][t1 % len(OVERLAPPING[name])].format(**slots)
    if style == 2:
        sit = SITUATIONS[other][t1 % len(SITUATIONS[other])].format(**slots)
        req = REQUESTS[name][t2 % len(REQUESTS[name])].format(**slots)
        return TWO_INTENT_FORMS[t3 % len(TWO_INTENT_FORMS)].format(sit=sit, Sit=_cap(sit), req=req, Req=_cap(req))
    if style == 3:
        r1 = REQUESTS[name][t2 % len(REQUESTS[name])].format(**slots)
        r2 = REQUESTS[other][t1 % len(REQUESTS[other])].format(**slots)
        return DOUBLE_FORMS[t3 % len(DOUBLE_FORMS)].format(req1=r1, Req1=_cap(r1), req2=r2)
    if style == 4:
        return VAGUE[name][t1 % len(VAGUE[name])].format(**slots)
    return VAGUE_GENERIC[t1 % len(VAGUE_GENERIC)].format(**slots)


def _messages(n: int, rng: np.random.Generator, start_id: int, mess: Mess, customers: int,
              labeled: bool = True, hardness: Hardness | None = None, truth: bool = False,
              counts: dict[str, int] | None = None) -> dict[str, list]:
    """``n`` support messages as columns (vectorised draws, then string formatting).

    ``truth``: also return ``true_intent`` (the intent the customer means, which the reply answers) and
    ``style`` columns, which the written files never hold. ``counts`` accumulates styles and noisy labels."""
    hardness = hardness or Hardness()
    age = rng.choice(len(AGE_BANDS), n, p=AGE_P)
    region = rng.choice(len(REGIONS), n, p=REGION_P)
    intent = np.where(age == 3, rng.choice(6, n, p=INTENT_P_65), rng.choice(6, n, p=INTENT_P))
    channel = rng.choice(len(CHANNELS), n, p=[0.5, 0.4, 0.1])
    ts = (np.datetime64("2025-11-01T00:00:00") + rng.integers(0, 365 * 86400, n).astype("timedelta64[s]"))
    style = rng.choice(len(STYLES), n, p=hardness.style_p())
    t1, t2, t3 = rng.integers(0, 1 << 30, (3, n))
    neighbour = rng.integers(0, 3, n)                        # the other intent of two-intent messages
    second = rng.random(n) < hardness.second_request_label   # two requests, labeled with the second one
    noisy = rng.random(n) < hardness.label_noise             # annotation mistake: a neighbouring intent
    noisy_to = rng.integers(0, 3, n)
    slots = _slots(n, rng)
    op = rng.integers(0, len(OPENERS), n)
    cl = rng.integers(0, len(CLOSERS), n)
    text = [""] * n
    reply = [""] * n
    label = [""] * n
    for i in range(n):
        name = INTENTS[intent[i]]
        other = NEIGHBOURS[name][neighbour[i]]
        text[i] = OPENERS[op[i]] + _body(style[i], name, other, t1[i], t2[i], t3[i], slots[i]) + CLOSERS[cl[i]]
        reply[i] = REPLIES[name].format(**slots[i])
        if noisy[i]:
            label[i] = NEIGHBOURS[name][noisy_to[i]]
        elif style[i] == 3 and second[i]:
            label[i] = other
        else:
            label[i] = name
    cols = {
        "message_id": [f"M{start_id + i:09d}" for i in range(n)],
        "customer_id": [f"C{c:06d}" for c in rng.integers(0, customers, n)],
        "created_at": [str(t).replace("T", " ") for t in ts],
        "channel": [CHANNELS[c] for c in channel],
        "region": [REGIONS[r] for r in region],
        "age_band": [AGE_BANDS[a] for a in age],
        "text": text,
    }
    if labeled:
        cols["intent"] = label
        cols["reply"] = reply
        if counts is not None:
            for k, s in enumerate(STYLES):
                counts[s] = counts.get(s, 0) + int((style == k).sum())
            counts["noisy_label"] = counts.get("noisy_label", 0) + int(noisy.sum())
            second_label = int(((style == STYLES.index("two_requests")) & second & ~noisy).sum())
            counts["second_request_label"] = counts.get("second_request_label", 0) + second_label
            counts["messages"] = counts.get("messages", 0) + n
    if truth:
        cols["true_intent"] = [INTENTS[k] for k in intent]
        cols["style"] = [STYLES[s] for s in style]
    _plant_mess(cols, rng, mess, labeled)
    return cols


def labeled_messages(n: int, seed: int = 7, hardness: Hardness | None = None) -> dict[str, list]:
    """``n`` labeled messages without the mess, with ``true_intent`` and ``style`` beside the label
    ``intent``: the planted difficulty, inspectable (``intent != true_intent`` is an annotation error)."""
    none = Mess(**{f: 0 for f in Mess.__dataclass_fields__})
    return _messages(n, np.random.default_rng(seed), 0, none, max(20, n // 4), hardness=hardness, truth=True)


def _plant_mess(cols: dict[str, list], rng: np.random.Generator, mess: Mess, labeled: bool) -> None:
    n = len(cols["text"])

    def pick(share: float) -> np.ndarray:
        k = int(round(n * share))
        return rng.choice(n, k, replace=False) if k else np.array([], dtype=int)

    text = cols["text"]
    for i in pick(mess.pii):
        kind = rng.integers(0, 3)
        if kind == 0:
            text[i] += f" You can reach me at jane.doe{rng.integers(1, 999)}@example.com."
        elif kind == 1:
            text[i] += f" Call me on +1 (555) {rng.integers(100, 999)}-{rng.integers(1000, 9999)}."
        else:
            text[i] += f" My card is 4111 1111 1111 {rng.integers(1000, 9999)}."
    # exact duplicates: copy an earlier row's text (and label) with case/whitespace noise
    for i in pick(mess.exact_dup):
        j = int(rng.integers(0, n))
        if i == j:
            continue
        t = text[j]
        style = rng.integers(0, 3)
        text[i] = t.upper() if style == 0 else ("  " + t.replace(" ", "  ") + " ") if style == 1 else t.lower()
        if labeled:
            cols["intent"][i] = cols["intent"][j]
            cols["reply"][i] = cols["reply"][j]
        for c in ("region", "age_band"):
            cols[c][i] = cols[c][j]
    for i in pick(mess.near_dup):
        j = int(rng.integers(0, n))
        if i == j:
            continue
        text[i] = text[j].rstrip(".!?") + ("!!" if rng.integers(0, 2) else " please")
        if labeled:
            cols["intent"][i] = cols["intent"][j]
            cols["reply"][i] = cols["reply"][j]
    for i in pick(mess.long_text):
        text[i] = text[i] + " " + " ".join(["I have tried everything and it still fails."] * 700)
    for i in pick(mess.empty_text):
        text[i] = None if rng.integers(0, 2) else "   "
    for i in pick(mess.bad_timestamp):
        cols["created_at"][i] = ["not a date", "31/02/2026", "", "yesterday"][int(rng.integers(0, 4))]
    if labeled:
        intent = cols["intent"]
        for i in pick(mess.case_noise):
            intent[i] = f" {intent[i].upper()} " if rng.integers(0, 2) else intent[i].title()
        for i in pick(mess.null_intent):
            intent[i] = None
        for i in pick(mess.unknown_intent):
            intent[i] = ["other", "complaint?", "n/a"][int(rng.integers(0, 3))]


def _bad_csv_lines(rng: np.random.Generator, k: int) -> list[bytes]:
    out = []
    for kind in (int(i) % 4 for i in rng.permutation(k)):  # every kind appears once k >= 4
        if kind == 0:
            out.append(b'M999999999,C000001,2026-01-05 10:00:00,email,north,30-44,"a "stray" quote",refund,ok\n')
        elif kind == 1:
            out.append(b"M999999998,C000002,2026-01-05 10:00:00,email,north\n")  # too few columns
        elif kind == 2:
            out.append(b"M999999997,C000003,2026-01-05,chat,south,18-29,hello,billing,reply,EXTRA,COLS\n")
        else:  # Latin-1 bytes in a UTF-8 file
            out.append(b"M999999996,C000004,2026-01-06 09:00:00,email,east,45-64,"
                       b"Caf\xe9 order r\xe9fund please,refund,We will refund it.\n")
    return out


def _bad_jsonl_lines(rng: np.random.Generator, k: int) -> list[bytes]:
    out = []
    for kind in (int(i) % 4 for i in rng.permutation(k)):
        if kind == 0:
            out.append(b'{"message_id": "A999999999", "text": "truncated json\n')
        elif kind == 1:
            out.append(b'["not", "an", "object"]\n')
        elif kind == 2:
            out.append(b'{"message_id": "A999999998", "text": "bad \xff\xfe bytes", "intent": "billing"}\n')
        else:
            out.append(b"this line is not json at all\n")
    return out


def _write_csv(path: Path, chunks, rng: np.random.Generator, mess: Mess) -> dict[str, int]:
    """Write column-dict chunks as one CSV (header once), malformed lines after each chunk."""
    n = bad = 0
    with open(path, "wb") as f:
        for columns in chunks:
            table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
            buf = io.BytesIO()
            pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=n == 0, quoting_style="needed"))
            f.write(buf.getvalue())
            n += table.num_rows
            k = max(4, int(round(table.num_rows * mess.bad_lines_per_100k / 100_000))) if mess.bad_lines_per_100k else 0
            lines = _bad_csv_lines(rng, k)
            bad += len(lines)
            f.writelines(lines)
    return {"rows": n, "bad_lines": bad}


def _write_jsonl(path: Path, columns: dict[str, list], rng: np.random.Generator, mess: Mess) -> dict[str, int]:
    keys = list(columns)
    n = len(columns[keys[0]])
    k = max(4, int(round(n * mess.bad_lines_per_100k / 100_000))) if mess.bad_lines_per_100k else 0
    bad_at = set(rng.choice(n, min(k, n), replace=False).tolist())
    lines = _bad_jsonl_lines(rng, len(bad_at))
    with open(path, "wb") as f:
        for i in range(n):
            row = {key: columns[key][i] for key in keys}
            f.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            if i in bad_at:
                f.write(lines.pop())
    return {"rows": n, "bad_lines": len(bad_at)}


def _kb_articles(n: int, rng: np.random.Generator) -> list[dict]:
    docs = []
    start = np.datetime64("2025-11-01T00:00:00")
    for i in range(n):
        intent = INTENTS[i % len(INTENTS)]
        topic = KB_TOPICS[intent][int(rng.integers(0, 4))]
        p = PRODUCTS[int(rng.integers(0, len(PRODUCTS)))]
        sents = [KB_SENTENCES[int(j)].format(t=topic, p=p, d=int(rng.integers(2, 10)),
                                             s=SHIP[int(rng.integers(0, len(SHIP)))])
                 for j in rng.choice(len(KB_SENTENCES), 6, replace=False)]
        ts = start + np.timedelta64(int(i * 365 * 86400 / max(n, 1)), "s")
        docs.append({"doc_id": f"KB{i:05d}", "published_at": str(ts).replace("T", " "), "topic": topic,
                     "title": f"{topic.capitalize()} for your {p}", "body": " ".join(sents)})
    for j in rng.choice(n, max(1, n // 50), replace=False):  # mess: empty bodies, bad dates
        docs[int(j)]["body"] = "" if j % 2 else None
    return docs


def _customers(n: int, rng: np.random.Generator) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("customer_id", "as_of", "plan", "tenure_months", "monthly_spend")}
    plans = ["basic", "plus", "premium"]
    for c in range(n):
        snaps = int(rng.integers(1, 5))
        first = int(rng.integers(0, 300))
        tenure = int(rng.integers(0, 60))
        plan = int(rng.integers(0, 3))
        for s in range(snaps):
            day = first + s * int(rng.integers(30, 120))
            cols["customer_id"].append(f"C{c:06d}")
            cols["as_of"].append(str(np.datetime64("2025-10-01") + np.timedelta64(day, "D")))
            if rng.random() < 0.3:
                plan = min(2, plan + 1)
            cols["plan"].append(plans[plan])
            cols["tenure_months"].append(str(tenure + s * 3))
            cols["monthly_spend"].append(f"{(10 + 25 * plan + rng.random() * 20):.2f}")
    return cols


def write_sample(out: str | Path, rows: int = 3000, seed: int = 7, mess: Mess | None = None,
                 hardness: Hardness | None = None) -> dict[str, Path]:
    """Write the sample data set into ``out``; returns ``{name: path}``. Deterministic per seed.

    ``hardness``: message styles and label noise of the intent task (default ``Hardness()``;
    ``Hardness.easy()`` gives the trivially separable task)."""
    if rows < 50:
        raise ValueError(f"--rows must be at least 50, got {rows}")
    mess = mess or Mess()
    hardness = hardness or Hardness()
    hardness.style_p()  # a bad Hardness fails here, before any file is written
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    customers = max(20, rows // 4)
    n_app = rows * 15 // 100
    n_csv = rows - n_app
    stats = {}
    counts: dict[str, int] = {}
    chunk = 200_000  # generated and written a chunk at a time: millions of rows in bounded memory
    stats["messages.csv"] = _write_csv(
        out / "messages.csv",
        (_messages(min(chunk, n_csv - start), rng, start, mess, customers, hardness=hardness, counts=counts)
         for start in range(0, n_csv, chunk)),
        rng, mess)
    app = _messages(n_app, rng, 500_000_000, mess, customers, hardness=hardness, counts=counts)
    app["channel"] = ["app"] * n_app
    app["message_id"] = [m.replace("M", "A", 1) for m in app["message_id"]]
    stats["messages_app.jsonl"] = _write_jsonl(out / "messages_app.jsonl", app, rng, mess)
    pool_n = max(100, rows // 5)
    pool = _messages(pool_n, rng, 800_000_000, Mess(exact_dup=0.03, near_dup=0.0, empty_text=0.01, pii=0.05,
                                                       long_text=0.0, bad_lines_per_100k=0, bad_timestamp=0.0),
                     customers, labeled=False, hardness=hardness)
    pool["message_id"] = [m.replace("M", "U", 1) for m in pool["message_id"]]
    stats["unlabeled_pool.jsonl"] = _write_jsonl(out / "unlabeled_pool.jsonl", pool, rng, Mess(bad_lines_per_100k=0))
    # the corpus has its own random stream: changing the messages' generator leaves it as it is
    docs = _kb_articles(max(60, min(rows // 10, 5000)), np.random.default_rng([seed, 1]))
    kb_cols = {k: [d[k] for d in docs] for k in docs[0]}
    stats["kb_articles.jsonl"] = _write_jsonl(out / "kb_articles.jsonl", kb_cols, rng, Mess(bad_lines_per_100k=0))
    cust = _customers(customers, np.random.default_rng([seed, 2]))  # its own stream, like the corpus
    table = pa.table({k: pa.array(v, pa.string()) for k, v in cust.items()})
    pacsv.write_csv(table, out / "customers.csv", pacsv.WriteOptions(quoting_style="needed"))
    stats["customers.csv"] = {"rows": len(cust["customer_id"]), "bad_lines": 0}
    (out / "BIAS.md").write_text(_bias_doc(rows, seed, stats, hardness, counts))
    return {name: out / name for name in [*stats, "BIAS.md"]}


def _bias_doc(rows: int, seed: int, stats: dict, hardness: Hardness, counts: dict[str, int]) -> str:
    n = max(counts.get("messages", 0), 1)
    share = lambda k: f"{counts.get(k, 0)} ({counts.get(k, 0) / n:.1%})"
    lines = [f"# Sample data (rows={rows}, seed={seed})", "",
             "## Planted bias", "",
             "- `age_band = '65+'` is about 4% of the labeled messages; the customer base (reference",
             "  distribution) has 25% in each age band.",
             "- Within `65+`, intents are drawn from "
             + ", ".join(f"{k} {p:.0%}" for k, p in zip(INTENTS, INTENT_P_65)) + ";",
             "  everybody else from " + ", ".join(f"{k} {p:.0%}" for k, p in zip(INTENTS, INTENT_P)) + ".",
             "  So `refund` is about 16 points rarer and `technical_issue` 20 points more common for `65+`.",
             "", "## Planted difficulty (the intent task is not trivially separable)", "",
             f"Of the {counts.get('messages', 0)} labeled messages generated (before duplicates and other mess):",
             f"- clear messages: {share('clear')}; clear but with another intent's words: {share('overlap')};",
             f"- two intents, a neighbouring intent's situation and the request (labeled with the request):"
             f" {share('two_intent')};",
             f"- two requests: {share('two_requests')}, labeled with the first request, or with the second in"
             f" {hardness.second_request_label:.0%} of them ({counts.get('second_request_label', 0)} labels);",
             f"- short vague messages leaning to their intent: {share('vague')}; short generic messages that fit"
             f" any intent: {share('vague_generic')};",
             f"- label noise: {share('noisy_label')} labels replaced by a neighbouring intent (rate"
             f" {hardness.label_noise:.0%}; neighbours: "
             + "; ".join(f"{k} -> {', '.join(v)}" for k, v in NEIGHBOURS.items()) + ").",
             "- The reply always answers the intent the customer meant; label noise touches `intent` only.",
             "", "## Planted mess", "",
             "- exact duplicates with case/whitespace noise, near duplicates (a small edit), empty and null",
             "  texts, unparseable `created_at`, missing and unknown intents, intent labels with stray",
             "  case/whitespace, e-mails / phone numbers / card numbers in texts, very long texts;",
             "- malformed CSV lines (unterminated quote, too few / too many columns), Latin-1 bytes in a",
             "  UTF-8 file; malformed JSONL lines (truncated, not an object, not JSON, invalid UTF-8).", "",
             "## Files", ""]
    lines += [f"- `{name}`: {s['rows']} rows, {s['bad_lines']} malformed lines" for name, s in stats.items()]
    return "\n".join(lines) + "\n"
