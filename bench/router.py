"""Route matching cost against the number of routes: it should stay flat.

    python -m bench.router

Builds routers of 10, 1,000 and 10,000 routes (literal and parameterised) and times matching
the last-added route of each kind. Prints microseconds per match.
"""

from __future__ import annotations

import timeit

from rtserve.app.router import Router


def build(count: int) -> Router:
    router = Router()
    for i in range(count // 2):
        router.add(f"/static{i}/page", ["GET"], i)
        router.add(f"/api/things{i}/{{id:int}}/parts/{{part}}", ["GET"], i)
    return router


def main() -> None:
    print(f"{'routes':>8} {'literal us':>11} {'params us':>10}")
    for count in (10, 1_000, 10_000):
        router = build(count)
        last = count // 2 - 1
        literal = f"/static{last}/page"
        dynamic = f"/api/things{last}/42/parts/wheel"
        n = 100_000
        match = router.match
        t_lit = timeit.timeit("match('GET', p)", globals={"match": match, "p": literal}, number=n)
        t_dyn = timeit.timeit("match('GET', p)", globals={"match": match, "p": dynamic}, number=n)
        t_lit, t_dyn = t_lit / n * 1e6, t_dyn / n * 1e6
        print(f"{count:>8} {t_lit:>11.2f} {t_dyn:>10.2f}")


if __name__ == "__main__":
    main()
