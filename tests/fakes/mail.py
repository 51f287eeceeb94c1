"""Sample mail for the email intake tests and the intake benchmark: requests, replies, robots and a mixed corpus.

Every generator returns the raw bytes a mail client or MTA would hand over (CRLF line ends), so the same message
can go in by SMTP (``smtplib``) and by IMAP (``APPEND``) and be recognised as the same message.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

DOMAIN = "example.com"
SUPPORT = f"support@{DOMAIN}"
# policy.SMTP: CRLF line ends and RFC 2047 for non-ASCII headers, as a real client sends them.
WIRE = policy.SMTP
START = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def _new(
    *,
    sender: str,
    to: str,
    subject: str,
    message_id: str | None,
    date: datetime | None,
    name: str = "",
    headers: Mapping[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage(policy=WIRE)
    msg["From"] = f"{name} <{sender}>" if name else sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or START)
    msg["Message-ID"] = message_id or make_msgid(domain=sender.rpartition("@")[2] or DOMAIN)
    for key, value in (headers or {}).items():
        msg[key] = value
    return msg


def request(
    subject: str = "Printer on the second floor is jammed",
    body: str = "Hello,\n\nthe printer next to the kitchen shows a paper jam and will not print.\n\nThanks,\nAna\n",
    *,
    sender: str = f"ana@{DOMAIN}",
    name: str = "",
    to: str = SUPPORT,
    message_id: str | None = None,
    date: datetime | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """A plain-text request written by a person (optionally answering ``in_reply_to``)."""
    msg = _new(sender=sender, to=to, subject=subject, message_id=message_id, date=date, name=name, headers=headers)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references or in_reply_to:
        msg["References"] = " ".join([*references, *([in_reply_to] if in_reply_to else [])])
    msg.set_content(body)
    return msg.as_bytes()


def header(raw: bytes, name: str) -> str:
    """One header of a raw message, decoded (empty when missing)."""
    return str(message_from_bytes(raw, policy=policy.default).get(name, ""))


def text_of(raw: bytes) -> str:
    """The plain-text body of a raw message."""
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


def reply(
    original: bytes,
    body: str,
    *,
    sender: str | None = None,
    message_id: str | None = None,
    date: datetime | None = None,
    subject: str | None = None,
) -> bytes:
    """A person's answer to ``original`` as mail clients write it: ``Re:``, threading headers, quoted history.

    ``sender`` defaults to the original's recipient (someone answering the mail they got).
    """
    parsed = message_from_bytes(original, policy=policy.default)
    parent_id = str(parsed["Message-ID"])
    refs = str(parsed.get("References", "")).split()
    who = sender or str(parsed["To"]).split("<")[-1].strip(">").strip()
    quoted = "\n".join(f"> {line}" for line in text_of(original).splitlines())
    text = f"{body}\n\nOn {parsed['Date']}, {parsed['From']} wrote:\n{quoted}\n"
    return request(
        subject or f"Re: {parsed['Subject']}",
        text,
        sender=who,
        to=str(parsed["From"]),
        message_id=message_id,
        date=date or START + timedelta(minutes=5),
        in_reply_to=parent_id,
        references=refs,
    )


def out_of_office(
    *, sender: str = f"ana@{DOMAIN}", to: str = SUPPORT, in_reply_to: str | None = None, exchange: bool = False
) -> bytes:
    """An out-of-office answer: RFC 3834 ``Auto-Submitted: auto-replied``, or Exchange's own header set.

    Exchange's variant deliberately lacks Auto-Submitted, so only ``X-Auto-Response-Suppress`` gives it away.
    """
    headers = (
        {"X-Auto-Response-Suppress": "All", "X-MS-Exchange-Inbox-Rules-Loop": sender, "Thread-Topic": "Away"}
        if exchange
        else {"Auto-Submitted": "auto-replied"}
    )
    subject = "Automatic reply: Away until Monday" if exchange else "Out of office: Away until Monday"
    body = "I am out of the office until Monday with no access to email. For urgent matters call the desk.\n"
    return request(subject, body, sender=sender, to=to, in_reply_to=in_reply_to, headers=headers)


def bounce(original: bytes, *, mta: str = f"mx.{DOMAIN}", status: str = "5.1.1") -> bytes:
    """A DSN (RFC 3464 ``multipart/report``) from ``MAILER-DAEMON@mta`` saying ``original`` could not be delivered.

    The original's header block rides along as ``text/rfc822-headers``, as Postfix and Exchange send it.
    """
    parsed = message_from_bytes(original, policy=policy.default)
    recipient = str(parsed["To"]).split("<")[-1].strip(">").strip()
    head = original.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    boundary = "=_dsn_boundary_42"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: {parsed['From']}",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {format_datetime(START + timedelta(minutes=1))}",
        f"Message-ID: {make_msgid(domain=mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at host {mta}.",
        "",
        "I'm sorry to have to inform you that your message could not be delivered to one or more recipients.",
        "",
        f"<{recipient}>: host {mta} said: 550 {status} User unknown",
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {mta}",
        "",
        f"Final-Recipient: rfc822; {recipient}",
        "Action: failed",
        f"Status: {status}",
        f"Diagnostic-Code: smtp; 550 {status} User unknown",
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
        head,
        "",
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode()


def list_mail(*, sender: str = f"all-staff@{DOMAIN}", to: str = SUPPORT) -> bytes:
    """A mailing-list post the support address is subscribed to (List-Id, List-Unsubscribe, Precedence: list)."""
    headers = {
        "List-Id": f"All staff <all-staff.lists.{DOMAIN}>",
        "List-Unsubscribe": f"<mailto:all-staff-leave@lists.{DOMAIN}>",
        "Precedence": "list",
    }
    body = "Reminder: the canteen closes early on Friday for the summer party. Please help us clear the tables.\n"
    return request("[All staff] Canteen closes early on Friday", body, sender=sender, to=to, headers=headers)


# -- a realistic mixed corpus (the benchmark's mailbox) --------------------------------------------------------------

# (subject, body) per department; {n}, {app}, {floor}, {amount} vary the text so no two messages are identical.
_REQUESTS: dict[str, list[tuple[str, str]]] = {
    "IT Support": [
        (
            "Laptop will not connect to the VPN",
            "Since this morning my laptop cannot connect to the VPN from home. "
            "It says authentication failed although my password works for {app}.",
        ),
        (
            "Password reset for {app}",
            "I have been locked out of {app} after too many attempts. Could you reset my "
            "password? I need it for a customer call at {n} o'clock.",
        ),
        (
            "Printer on floor {floor} keeps jamming",
            "The printer next to the kitchen on floor {floor} jams on every "
            "second page and shows error E{n}. Could someone have a look?",
        ),
        (
            "Outlook crashes when opening attachments",
            "Outlook closes itself whenever I open a PDF attachment. "
            "I already restarted the laptop twice. Ticket number from last time was {n}.",
        ),
        ("Need a licence for {app}", "Our team needs {n} more licences for {app} for the new starters next month."),
        ("Second monitor not detected", "My docking station no longer detects the second monitor since the update."),
    ],
    "HR": [
        (
            "Annual leave balance",
            "How many days of annual leave do I have left this year? I want to book {n} days in August.",
        ),
        (
            "Question about my payslip",
            "My payslip for last month shows {amount} EUR less than usual. Could payroll explain the deduction?",
        ),
        (
            "Parental leave",
            "I am expecting a baby in {n} months and would like to know how to apply for parental "
            "leave and what the pay is.",
        ),
        (
            "Onboarding for new starter",
            "A new colleague joins my team on Monday. What do I need to prepare for the "
            "onboarding and the contract signature?",
        ),
        ("Sick note", "I was sick for {n} days last week. Where do I send the doctor's certificate?"),
    ],
    "Facilities": [
        (
            "Heating broken on floor {floor}",
            "The heating on floor {floor} has been off since yesterday and it is "
            "freezing in the open space. It is {n} degrees.",
        ),
        (
            "Meeting room {n} booking problem",
            "Meeting room {n} shows as booked although nobody is using it. The display by the door is frozen.",
        ),
        ("Leak in the kitchen", "There is water leaking from under the sink in the kitchen on floor {floor}."),
        ("Broken chair", "My office chair lost its height adjustment. Could I get a replacement? Desk {n}."),
        ("Parking badge not working", "My parking badge stopped opening the garage barrier this morning (badge {n})."),
    ],
    "Finance": [
        (
            "Invoice {n} not paid",
            "Our supplier says invoice {n} over {amount} EUR is 30 days overdue. Could you check the payment status?",
        ),
        (
            "Expense reimbursement",
            "I submitted my travel expenses ({amount} EUR, train and hotel) three weeks ago "
            "and have not been reimbursed yet.",
        ),
        ("Purchase order for new laptops", "Please raise a purchase order for {n} laptops; the quote is attached."),
        (
            "Corporate card declined",
            "My corporate card was declined at the hotel yesterday. The amount was {amount} EUR, well within my limit.",
        ),
        ("VAT on foreign invoice", "How do we book the VAT on an invoice from a supplier in another EU country?"),
    ],
    "General": [
        ("Question", "Who do I ask about the company summer party? I could not find anything on the intranet."),
        ("Lost and found", "I left my umbrella in meeting room {n} yesterday. Has anyone handed it in?"),
    ],
}
_APPS = ["Salesforce", "SAP", "Jira", "Confluence", "Teams", "Workday", "GitLab", "Zoom"]
_FIRST = [
    "Ana",
    "Bob",
    "Chloé",
    "Dieter",
    "Eva",
    "Farid",
    "Grete",
    "Hiro",
    "Ines",
    "João",
    "Kemal",
    "Lena",
    "Mika",
    "Nora",
    "Olaf",
    "Priya",
    "Quentin",
    "Rosa",
    "Søren",
    "Tomás",
    "Ute",
    "Vera",
    "Wen",
    "Yusuf",
    "Zoë",
]
_LAST = [
    "Müller",
    "Smith",
    "Dubois",
    "García",
    "Rossi",
    "Novak",
    "Kowalski",
    "Sato",
    "Jensen",
    "Öztürk",
    "Silva",
    "Ivanova",
    "Nakamura",
    "Fischer",
    "O'Brien",
]
_NON_ASCII = [
    (
        "Drucker im 3. Stock druckt nur Hieroglyphen",
        "Grüß Gott,\n\nder Drucker im dritten Stock druckt seit heute "
        "früh nur noch Sonderzeichen. Können Sie bitte jemanden schicken?\n\nDanke schön,\n{name}",
        "iso-8859-1",
    ),
    (
        "Remboursement de frais de déplacement",
        "Bonjour,\n\nj'ai envoyé ma note de frais ({amount} €) il y a trois "
        "semaines et je n'ai toujours pas été remboursé.\n\nCordialement,\n{name}",
        "utf-8",
    ),
    (
        "ノートパソコンがVPNに接続できません",
        "お疲れ様です。\n\n今朝からノートパソコンがVPNに接続できません。"
        "パスワードは正しいです。\n\nよろしくお願いします。\n{name}",
        "utf-8",
    ),
    (
        "Zamek w drzwiach sali konferencyjnej",
        "Dzień dobry,\n\nzamek w drzwiach sali {n} jest zepsuty i nie da się jej zamknąć.\n\nPozdrawiam,\n{name}",
        "utf-8",
    ),
]
_KINDS = ("plain", "html", "html-only", "attachment", "non-ascii", "reply")
_WEIGHTS = (40, 15, 5, 15, 10, 15)


def _values(rng: random.Random, name: str) -> dict[str, object]:
    return {
        "n": rng.randint(2, 99),
        "app": rng.choice(_APPS),
        "floor": rng.randint(1, 9),
        "amount": rng.randint(12, 4800),
        "name": name,
    }


def _html(text: str) -> str:
    paragraphs = "".join(f"<p>{line}</p>" for line in text.split("\n\n"))
    return (
        "<html><head><style>p{font-family:Calibri}</style></head><body>"
        f"{paragraphs}<table><tr><td>Sent from</td><td><b>Outlook</b></td></tr></table></body></html>"
    )


def corpus(n: int, *, seed: int = 0, tag: str = "c", domain: str = DOMAIN, to: str = SUPPORT) -> Iterator[bytes]:
    """``n`` distinct, realistic requests: plain, HTML (with and without a text part), attachments, non-ASCII
    (latin-1 and UTF-8, quoted-printable and base64), and replies that thread to an earlier message of the corpus.

    Deterministic for a given ``seed``; ``tag`` goes into every Message-ID so two corpora never collide. Senders
    come from a pool of ``n`` employees (at least 50), so the per-recipient reply limit rarely cuts an acknowledgement.
    """
    rng = random.Random(seed)
    pool = max(50, n)
    senders = [(f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", f"employee{k}@{domain}") for k in range(pool)]
    earlier: list[tuple[str, str, str]] = []  # (message id, subject, text) of recent first mails
    departments = list(_REQUESTS)
    blob = rng.randbytes(48 * 1024)
    for i in range(n):
        name, sender = senders[rng.randrange(pool)]
        kind = rng.choices(_KINDS, _WEIGHTS)[0]
        if kind == "reply" and not earlier:
            kind = "plain"
        message_id = f"<{tag}.{seed}.{i}@{domain}>"
        date = START + timedelta(seconds=37 * i)
        msg = _new(sender=sender, to=to, subject="", message_id=message_id, date=date, name=name)
        del msg["Subject"]
        if kind == "non-ascii":
            subject, template, charset = rng.choice(_NON_ASCII)
            msg["Subject"] = subject
            msg.set_content(
                template.format(**_values(rng, name)), charset=charset, cte=rng.choice(["quoted-printable", "base64"])
            )
        elif kind == "reply":
            parent_id, parent_subject, parent_text = earlier[rng.randrange(len(earlier))]
            msg["Subject"] = f"Re: {parent_subject}"
            msg["In-Reply-To"] = parent_id
            msg["References"] = parent_id
            quoted = "\n".join(f"> {line}" for line in parent_text.splitlines())
            msg.set_content(f"Any news on this? It is still happening.\n\nOn Monday, {to} wrote:\n{quoted}\n")
        else:
            subject, template = rng.choice(_REQUESTS[rng.choice(departments)])
            values = _values(rng, name)
            subject, text = subject.format(**values), template.format(**values) + f"\n\nBest regards,\n{name}\n"
            msg["Subject"] = subject
            if kind == "html-only":
                msg.set_content(_html(text), subtype="html")
            else:
                msg.set_content(text)
                if kind == "html":
                    msg.add_alternative(_html(text), subtype="html")
                elif kind == "attachment":
                    size = rng.choice([3, 8, 20, 45]) * 1024
                    filename, maintype, subtype = rng.choice(
                        [
                            ("quote.pdf", "application", "pdf"),
                            ("screenshot.png", "image", "png"),
                            (
                                "Kostenübersicht März.xlsx",
                                "application",
                                "vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                            ),
                        ]
                    )
                    msg.add_attachment(blob[:size], maintype=maintype, subtype=subtype, filename=filename)
            earlier.append((message_id, subject, text))
            del earlier[:-50]
        yield msg.as_bytes()
