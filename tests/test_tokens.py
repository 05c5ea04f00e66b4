"""Row tokens: 128 random bits, URL-safe, drawn from a per-thread pool that a forked worker never shares."""

import base64
import os
import threading

from campaigns.models import new_token, random_bytes


def test_tokens_are_128_url_safe_bits_and_distinct():
    tokens = [new_token() for _ in range(3000)]  # several draws of the pool
    assert len(set(tokens)) == len(tokens)
    for token in tokens[:50]:
        assert len(base64.urlsafe_b64decode(token + "==")) == 16
        assert token.replace("-", "").replace("_", "").isalnum()


def test_threads_draw_distinct_tokens():
    drawn: list[list[str]] = [[], []]
    threads = [
        threading.Thread(target=lambda out=out: out.extend(new_token() for _ in range(500))) for out in drawn
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(drawn[0]) & set(drawn[1])


def test_a_forked_worker_draws_tokens_of_its_own():
    new_token()  # the parent now holds a pool a child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report five tokens, then leave without running pytest's exit code
        os.write(write, " ".join(new_token() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_token() for _ in range(5)]
    assert len(child) == 5
    assert not set(child) & set(parent)


def test_random_bytes_of_any_size_never_repeat_the_pool():
    drawn = [random_bytes(n) for n in (5, 16, 4096 + 7, 16, 3) * 40]  # across draws, one larger than a pool
    assert [len(b) for b in drawn] == [5, 16, 4096 + 7, 16, 3] * 40
    sixteen = [b for b in drawn if len(b) == 16] + [base64.urlsafe_b64decode(new_token() + "==")]
    assert len(set(sixteen)) == len(sixteen)


def test_a_link_token_is_hmac_sha256_of_the_row_token_so_links_already_sent_keep_working(settings):
    import base64
    import hashlib
    import hmac

    from campaigns.tokens import PURPOSES, PublicUrls, purpose_token, purpose_token_check

    urls = PublicUrls()
    for purpose in PURPOSES:
        token = new_token()
        key = hashlib.sha256(f"xsell.{purpose}.{settings.SECRET_KEY}".encode()).digest()
        mac = hmac.new(key, token.encode(), hashlib.sha256).digest()[:12]
        expected = f"{token}.{base64.urlsafe_b64encode(mac).decode()}"
        assert purpose_token(token, purpose) == expected
        assert purpose_token_check(expected, purpose) == token
        assert urls("track-click", token, purpose).endswith(f"/{expected}")


def test_public_urls_are_the_reversed_routes_with_the_signed_token(settings):
    import pytest
    from django.urls import reverse

    from campaigns.tokens import PublicUrls, public_url, purpose_token

    urls = PublicUrls()
    routes = [("track-click", "click"), ("track-open", "open"), ("accept", "accept")]
    routes += [("unsubscribe", "unsubscribe"), ("one-click", "one-click"), ("preferences", "preferences")]
    for _ in range(2):  # the second time from the instance's routes
        for name, purpose in routes:
            token = new_token()
            expected = settings.SITE_URL + reverse(name, kwargs={"token": purpose_token(token, purpose)})
            assert urls(name, token, purpose) == expected == public_url(name, token, purpose)
    with pytest.raises(ValueError, match="unknown link purpose"):
        urls("track-click", new_token(), "clack")
