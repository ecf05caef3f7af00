"""Tests for rtserve.app.forms: urlencoded and multipart parsing, limits and robustness."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rtserve.app.forms import (
    FormData,
    UploadFile,
    parse_content_type,
    parse_form,
    parse_multipart,
    parse_urlencoded,
)
from rtserve.errors import HTTPError, MissingArgument

BOUNDARY = "----rtserveBoundary7MA4YWxkTrZu0gW"
FUZZ = settings(max_examples=200, deadline=None)


# --- a small multipart encoder, written for the tests -------------------------------------


@dataclass
class FilePart:
    filename: str
    content_type: str
    data: bytes


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_multipart(
    fields: list[tuple[str, str | FilePart]],
    boundary: str = BOUNDARY,
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    out = [preamble + b"\r\n" if preamble else b""]
    for name, value in fields:
        out.append(f"--{boundary}\r\n".encode())
        disposition = f"Content-Disposition: form-data; name={quote(name)}"
        if isinstance(value, FilePart):
            disposition += f"; filename={quote(value.filename)}"
            out.append(f"{disposition}\r\nContent-Type: {value.content_type}\r\n\r\n".encode())
            out.append(value.data)
        else:
            out.append(f"{disposition}\r\n\r\n".encode())
            out.append(value.encode())
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    out.append(epilogue)
    return b"".join(out)


def raw_multipart(*parts: str, boundary: str = BOUNDARY) -> bytes:
    """Join raw part texts (headers, blank line, content) with boundary lines."""
    body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts)
    return (body + f"--{boundary}--\r\n").encode()


def status_of(body: bytes, boundary: str = BOUNDARY, **limits: int) -> int:
    with pytest.raises(HTTPError) as info:
        parse_multipart(body, boundary, **limits)
    return info.value.status


# --- FormData ------------------------------------------------------------------------------


def test_formdata_is_an_ordered_multimap() -> None:
    upload = UploadFile("doc", "a.txt", "text/plain", {}, b"hi")
    form = FormData([("a", "1"), ("b", "2"), ("a", "3"), ("doc", upload)])
    assert form["a"] == "1"
    assert form.get("a") == "1"
    assert form.get("zzz") is None
    assert form.get("zzz", "x") == "x"
    assert form.getall("a") == ["1", "3"]
    assert form.getall("zzz") == []
    assert "b" in form
    assert "zzz" not in form
    assert list(form) == ["a", "b", "doc"]
    assert len(form) == 3
    assert form.items() == [("a", "1"), ("b", "2"), ("a", "3"), ("doc", upload)]
    assert form.files() == [("doc", upload)]
    with pytest.raises(KeyError):  # a MissingArgument: answers 400 when not caught
        form["zzz"]
    with pytest.raises(MissingArgument, match="missing form field 'zzz'"):
        form["zzz"]


def test_formdata_returns_copies() -> None:
    form = FormData([("a", "1")])
    form.getall("a").append("2")
    form.items().append(("b", "3"))
    assert form.getall("a") == ["1"]
    assert form.items() == [("a", "1")]


def test_upload_file_repr_hides_data() -> None:
    upload = UploadFile("f", "x.bin", "application/octet-stream", {}, b"secret" * 10)
    assert "secret" not in repr(upload)
    assert "size=60" in repr(upload)


# --- urlencoded ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", []),
        (b"a=1", [("a", "1")]),
        (b"a=1&b=2&a=3", [("a", "1"), ("b", "2"), ("a", "3")]),
        (b"a=hello+world", [("a", "hello world")]),
        (b"a=%2B%26%3D", [("a", "+&=")]),
        (b"caf%C3%A9=cr%C3%A8me", [("café", "crème")]),
        (b"a=&b", [("a", ""), ("b", "")]),
        (b"a=1&&b=2&", [("a", "1"), ("b", "2")]),
        (b"a=1=2", [("a", "1=2")]),
        (b"a=%zz%4", [("a", "%zz%4")]),
        (b"=v", [("", "v")]),
    ],
)
def test_parse_urlencoded(body: bytes, expected: list[tuple[str, str]]) -> None:
    assert parse_urlencoded(body).items() == expected


@pytest.mark.parametrize("body", [b"a=%FF", b"%C3=1", b"a=\xff"])
def test_parse_urlencoded_rejects_invalid_utf8(body: bytes) -> None:
    with pytest.raises(HTTPError) as info:
        parse_urlencoded(body)
    assert info.value.status == 400


def test_parse_urlencoded_field_limit() -> None:
    assert len(parse_urlencoded(b"a=1&b=2", max_fields=2).items()) == 2
    with pytest.raises(HTTPError) as info:
        parse_urlencoded(b"a=1&b=2&c=3", max_fields=2)
    assert info.value.status == 413


URL_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)


@FUZZ
@given(st.lists(st.tuples(URL_TEXT, URL_TEXT), max_size=20))
def test_urlencoded_round_trip(pairs: list[tuple[str, str]]) -> None:
    body = urlencode(pairs).encode("ascii")
    assert parse_urlencoded(body).items() == pairs


@FUZZ
@given(st.binary(max_size=300))
def test_urlencoded_only_raises_http_errors(body: bytes) -> None:
    try:
        parse_urlencoded(body, max_fields=10)
    except HTTPError as exc:
        assert exc.status in (400, 413)


# --- parse_content_type ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/html", ("text/html", {})),
        ("Text/HTML; Charset=UTF-8", ("text/html", {"charset": "UTF-8"})),
        (
            "multipart/form-data; boundary=----abc",
            ("multipart/form-data", {"boundary": "----abc"}),
        ),
        ('multipart/form-data; boundary="a;b=c"', ("multipart/form-data", {"boundary": "a;b=c"})),
        (r'form-data; name="a\"b\\c"', ("form-data", {"name": 'a"b\\c'})),
        ('form-data; name=""', ("form-data", {"name": ""})),
        ("a/b ;  x = 1 ; y=2", ("a/b", {"x": "1", "y": "2"})),
        ("a/b; x=1; x=2", ("a/b", {"x": "1"})),
        ("a/b; novalue; =orphan; ok=1", ("a/b", {"ok": "1"})),
        ('a/b; x="unterminated', ("a/b", {"x": "unterminated"})),
        ('a/b; x="q"trailing; y=2', ("a/b", {"x": "q", "y": "2"})),
        ("", ("", {})),
        (";;;", ("", {})),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected


@FUZZ
@given(st.text(max_size=200))
def test_parse_content_type_never_raises(value: str) -> None:
    media_type, params = parse_content_type(value)
    assert media_type == media_type.lower()
    assert all(name == name.lower() for name in params)


# --- multipart: well-formed input ----------------------------------------------------------


def test_multipart_fields_and_files() -> None:
    body = encode_multipart(
        [
            ("title", "Hello, wörld"),
            ("doc", FilePart("report.pdf", "application/pdf", b"%PDF-\x00\xff\r\n")),
            ("title", "second"),
            ("empty", ""),
        ]
    )
    form = parse_multipart(body, BOUNDARY)
    assert form.getall("title") == ["Hello, wörld", "second"]
    assert form["empty"] == ""
    doc = form["doc"]
    assert isinstance(doc, UploadFile)
    assert doc.name == "doc"
    assert doc.filename == "report.pdf"
    assert doc.content_type == "application/pdf"
    assert doc.data == b"%PDF-\x00\xff\r\n"
    assert doc.headers["content-type"] == "application/pdf"
    assert doc.headers["content-disposition"].startswith("form-data;")
    assert [name for name, _ in form.files()] == ["doc"]
    assert list(form) == ["title", "doc", "empty"]


def test_multipart_browser_style_body() -> None:
    body = (
        b"------WebKitFormBoundaryX\r\n"
        b'Content-Disposition: form-data; name="comment"\r\n'
        b"\r\n"
        b"line one\r\nline two\r\n"
        b"------WebKitFormBoundaryX\r\n"
        b'Content-Disposition: form-data; name="upload"; filename=""\r\n'
        b"Content-Type: application/octet-stream\r\n"
        b"\r\n"
        b"\r\n"
        b"------WebKitFormBoundaryX--\r\n"
    )
    form = parse_multipart(body, "----WebKitFormBoundaryX")
    assert form["comment"] == "line one\r\nline two"
    upload = form["upload"]
    assert isinstance(upload, UploadFile)
    assert upload.filename == ""
    assert upload.data == b""


def test_multipart_default_file_content_type() -> None:
    body = raw_multipart('Content-Disposition: form-data; name="f"; filename="x"\r\n\r\ndata')
    upload = parse_multipart(body, BOUNDARY)["f"]
    assert isinstance(upload, UploadFile)
    assert upload.content_type == "application/octet-stream"
    assert upload.headers == {"content-disposition": 'form-data; name="f"; filename="x"'}


def test_multipart_filename_star() -> None:
    body = raw_multipart(
        'Content-Disposition: form-data; name=f; filename="fallback.txt"; '
        "filename*=UTF-8''na%C3%AFve%20file.txt\r\n\r\nx",
        "Content-Disposition: form-data; name=g; filename*=iso-8859-1'en'caf%E9\r\n\r\ny",
        'Content-Disposition: form-data; name=h; filename="plain"; filename*=bogus\r\n\r\nz',
    )
    form = parse_multipart(body, BOUNDARY)
    names = {name: value.filename for name, value in form.files()}
    assert names == {"f": "naïve file.txt", "g": "café", "h": "plain"}


def test_multipart_invalid_filename_star_alone_is_rejected() -> None:
    body = raw_multipart("Content-Disposition: form-data; name=f; filename*=UTF-8''%FF\r\n\r\nx")
    assert status_of(body) == 400


def test_multipart_preamble_epilogue_and_padding() -> None:
    body = (
        b"This is the preamble.\r\n--B \t\r\n"
        b"Content-Disposition: form-data; name=a\r\n\r\n1\r\n"
        b"--B\r\n"
        b"content-disposition: FORM-DATA; NAME=b\r\n\r\n2\r\n"
        b"--B--  and an epilogue\r\n--B\r\nignored"
    )
    assert parse_multipart(body, "B").items() == [("a", "1"), ("b", "2")]


def test_multipart_without_parts() -> None:
    assert len(parse_multipart(b"--B--", "B")) == 0
    assert len(parse_multipart(b"--B--\r\n", "B")) == 0


def test_multipart_content_may_look_like_a_boundary() -> None:
    body = raw_multipart(
        'Content-Disposition: form-data; name="a"\r\n\r\nx--B\r\n-B\r\n--C', boundary="B"
    )
    assert parse_multipart(body, "B")["a"] == "x--B\r\n-B\r\n--C"


def test_multipart_header_block_exactly_at_limit() -> None:
    header = 'Content-Disposition: form-data; name="a"\r\n'
    body = raw_multipart(header + "\r\nv")
    assert parse_multipart(body, BOUNDARY, max_part_headers=len(header))["a"] == "v"
    assert status_of(body, max_part_headers=len(header) - 1) == 400


def test_multipart_file_size_limit() -> None:
    body = encode_multipart([("f", FilePart("a", "text/plain", b"x" * 10))])
    assert parse_multipart(body, BOUNDARY, max_file_size=10)
    assert status_of(body, max_file_size=9) == 413


def test_multipart_field_limit() -> None:
    body = encode_multipart([("a", "1"), ("b", "2"), ("c", "3")])
    assert len(parse_multipart(body, BOUNDARY, max_fields=3)) == 3
    assert status_of(body, max_fields=2) == 413


# --- multipart: malformed input -----------------------------------------------------------

GOOD_PART = 'Content-Disposition: form-data; name="a"\r\n\r\nvalue'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "does not contain"),
        (b"no boundary here", "does not contain"),
        (f"--{BOUNDARY}\r\n{GOOD_PART}".encode(), "closing boundary"),
        (f"--{BOUNDARY}\r\n{GOOD_PART}\r\n--{BOUNDARY}".encode(), "closing boundary"),
        (f"--{BOUNDARY}".encode(), "closing boundary"),
        (f"--{BOUNDARY}x\r\n{GOOD_PART}\r\n--{BOUNDARY}--".encode(), "boundary line"),
        (f"--{BOUNDARY}\n{GOOD_PART}\r\n--{BOUNDARY}--".encode(), "boundary line"),
        (raw_multipart("\r\nno headers"), "Content-Disposition"),
        (raw_multipart("Content-Type: text/plain\r\n\r\nx"), "Content-Disposition"),
        (raw_multipart("Content-Disposition: attachment; name=a\r\n\r\nx"), "not form-data"),
        (raw_multipart("Content-Disposition: form-data\r\n\r\nx"), "field name"),
        (raw_multipart("Content-Disposition: form-data; filename=a\r\n\r\nx"), "field name"),
        (raw_multipart("Content-Disposition: form-data; name=a\r\nx"), "blank line"),
        (raw_multipart("Content-Disposition: form-data; name=a"), "blank line"),
        (raw_multipart(""), "blank line"),
        (raw_multipart("X-Long: " + "y" * 9000 + "\r\n\r\nv"), "too large"),
        (raw_multipart("no colon here\r\n\r\nv"), "malformed"),
        (raw_multipart(": empty name\r\n\r\nv"), "malformed"),
        (raw_multipart("Bad Name: v\r\n\r\nv"), "malformed"),
        (raw_multipart(f" folded: x\r\n{GOOD_PART}"), "malformed"),
        (raw_multipart(f"Content-Disposition: form-data; name=b\r\n{GOOD_PART}"), "duplicate"),
    ],
)
def test_multipart_malformed(body: bytes, reason: str) -> None:
    with pytest.raises(HTTPError) as info:
        parse_multipart(body, BOUNDARY)
    assert info.value.status == 400
    assert reason in info.value.detail


def test_multipart_invalid_utf8() -> None:
    field = b'--B\r\nContent-Disposition: form-data; name="a"\r\n\r\n\xff\r\n--B--'
    header = b'--B\r\nContent-Disposition: form-data; name="\xff"\r\n\r\nv\r\n--B--'
    for body in (field, header):
        with pytest.raises(HTTPError) as info:
            parse_multipart(body, "B")
        assert info.value.status == 400
        assert "UTF-8" in info.value.detail
    binary_file = b"--B\r\nContent-Disposition: form-data; name=a; filename=b\r\n\r\n\xff\r\n--B--"
    upload = parse_multipart(binary_file, "B")["a"]
    assert isinstance(upload, UploadFile)
    assert upload.data == b"\xff"


@pytest.mark.parametrize(
    "boundary", ["", "x" * 71, "ends with space ", "semi;colon", "é", "a\r\nb"]
)
def test_multipart_bad_boundary(boundary: str) -> None:
    with pytest.raises(HTTPError) as info:
        parse_multipart(b"--x--", boundary)
    assert info.value.status == 400
    assert "boundary" in info.value.detail


def test_multipart_accepts_longest_boundary() -> None:
    boundary = "'()+_,-./:=? 0aZ" + "x" * 54
    assert len(boundary) == 70
    assert parse_multipart(encode_multipart([("a", "1")], boundary), boundary)["a"] == "1"


# --- parse_form ------------------------------------------------------------------------------


def test_parse_form_dispatch() -> None:
    urlencoded = parse_form("application/x-www-form-urlencoded; charset=UTF-8", b"a=1")
    assert urlencoded["a"] == "1"
    body = encode_multipart([("a", "2")])
    assert parse_form(f'Multipart/Form-Data; boundary="{BOUNDARY}"', body)["a"] == "2"


def test_parse_form_passes_limits() -> None:
    with pytest.raises(HTTPError) as info:
        parse_form("application/x-www-form-urlencoded", b"a=1&b=2", max_fields=1)
    assert info.value.status == 413
    body = encode_multipart([("f", FilePart("a", "text/plain", b"xx"))])
    with pytest.raises(HTTPError) as info:
        parse_form(f"multipart/form-data; boundary={BOUNDARY}", body, max_file_size=1)
    assert info.value.status == 413


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("multipart/form-data", 400),
        ("multipart/form-data; boundary=", 400),
        ('multipart/form-data; boundary=""', 400),
        ("application/json", 415),
        ("text/plain", 415),
        ("", 415),
    ],
)
def test_parse_form_errors(content_type: str, status: int) -> None:
    with pytest.raises(HTTPError) as info:
        parse_form(content_type, b"a=1")
    assert info.value.status == status


# --- properties ----------------------------------------------------------------------------

HEADER_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=20,
)
BOUNDARIES = st.text(alphabet="0123456789abcdefXYZ'()+_,-./:=? ", min_size=1, max_size=70).filter(
    lambda b: not b.endswith(" ")
)
VALUES: st.SearchStrategy[str | FilePart] = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
    st.builds(
        FilePart,
        filename=HEADER_TEXT,
        content_type=st.sampled_from(["text/plain", "image/png", "text/csv; charset=utf-8"]),
        data=st.binary(max_size=100),
    ),
)
FIELDS = st.lists(st.tuples(HEADER_TEXT, VALUES), max_size=8)


def delimiter_count(body: bytes, boundary: str) -> int:
    return body.count(b"\r\n--" + boundary.encode())


@FUZZ
@given(
    fields=FIELDS,
    boundary=BOUNDARIES,
    preamble=st.binary(max_size=20),
    epilogue=st.binary(max_size=20),
)
def test_multipart_round_trip(
    fields: list[tuple[str, str | FilePart]], boundary: str, preamble: bytes, epilogue: bytes
) -> None:
    body = encode_multipart(fields, boundary, preamble=preamble, epilogue=epilogue)
    # RFC 2046 forbids the delimiter inside content; skip the rare draws that contain it.
    dash_boundary = b"--" + boundary.encode()
    framed = body[: len(body) - len(epilogue)]
    assume(framed.count(b"\r\n" + dash_boundary) == len(fields) + (1 if preamble else 0))
    assume(not preamble.startswith(dash_boundary))

    form = parse_multipart(body, boundary)

    assert [name for name, _ in form.items()] == [name for name, _ in fields]
    for (_, got), (_, sent) in zip(form.items(), fields, strict=True):
        if isinstance(sent, FilePart):
            assert isinstance(got, UploadFile)
            assert (got.filename, got.content_type, got.data) == (
                sent.filename,
                sent.content_type,
                sent.data,
            )
        else:
            assert got == sent


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["B", BOUNDARY]))
def test_multipart_random_bytes_only_raise_http_errors(body: bytes, boundary: str) -> None:
    try:
        parse_multipart(body, boundary, max_part_headers=64, max_file_size=50, max_fields=5)
    except HTTPError as exc:
        assert exc.status in (400, 413)


@FUZZ
@given(fields=FIELDS, data=st.data())
def test_multipart_mutated_bodies_only_raise_http_errors(
    fields: list[tuple[str, str | FilePart]], data: st.DataObject
) -> None:
    body = bytearray(encode_multipart(fields, "B"))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        at = data.draw(st.integers(0, len(body)))
        if action == "flip" and at < len(body):
            body[at] = data.draw(st.sampled_from(b'\r\n-B\x00\xff" ;=:'))
        elif action == "delete":
            del body[at : at + data.draw(st.integers(1, 8))]
        elif action == "insert":
            chunk = data.draw(st.sampled_from([b"\r\n", b"--B", b"\r\n--B\r\n", b'"', b"\xc3"]))
            body[at:at] = chunk
        else:
            del body[at:]
    try:
        parse_multipart(bytes(body), "B", max_part_headers=100, max_file_size=60)
    except HTTPError as exc:
        assert exc.status in (400, 413)


@FUZZ
@given(st.text(max_size=60), st.binary(max_size=100))
def test_parse_form_only_raises_http_errors(content_type: str, body: bytes) -> None:
    try:
        parse_form(content_type, body)
    except HTTPError as exc:
        assert exc.status in (400, 413, 415)
