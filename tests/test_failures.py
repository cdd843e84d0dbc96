"""wsfront.failures: what the CLI and a starting front end say in one line
(the operator's to fix) and what they show with its traceback (a bug)."""

import sqlite3

from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from wsfront import cli, service
from wsfront.catalog.errors import CatalogUnavailable, NotFound, SchemaTooNew
from wsfront.failures import operator_error


def _psycopg_error(name: str) -> Exception:
    """An exception that is psycopg's by its module, without psycopg."""
    return type(name, (Exception,), {"__module__": "psycopg.errors"})("refused\nHINT: x")


def test_catalog_driver_and_system_errors_are_the_operators():
    for error in (
        NotFound("no user bob"),
        SchemaTooNew("schema 9"),
        sqlite3.OperationalError("unable to open database file"),
        _psycopg_error("OperationalError"),
        _psycopg_error("InsufficientPrivilege"),
        FileNotFoundError(2, "No such file or directory", "/nowhere"),
    ):
        assert operator_error(error), error
    for error in (ValueError("x"), KeyError("k"), AttributeError("a")):
        assert not operator_error(error), error


def test_the_cli_and_the_front_end_judge_alike():
    """One predicate: what the CLI explains in a line, a front end that
    fails to start says in one line too (and more: its own start errors)."""
    errors = [
        SchemaTooNew("schema 9"),
        _psycopg_error("UndefinedTable"),
        OSError(13, "Permission denied"),
        ValueError("a bug"),
        ZeroDivisionError(),
    ]
    for error in errors:
        assert (cli.explain(Failure(error), "u") is not None) == service._operator_error(error)
    assert service._operator_error(CannotListenError("127.0.0.1", 21, OSError()))
    assert service._operator_error(service.BadStorageEndpoint("s1=x"))


def test_the_cli_says_the_cause_of_an_unreachable_catalog():
    try:
        raise CatalogUnavailable("catalog unreachable") from _psycopg_error("OperationalError")
    except CatalogUnavailable as e:
        failure = Failure(e)
    assert (
        cli.explain(failure, "postgresql://x") == "cannot use the catalog postgresql://x: refused"
    )
    assert cli.explain(Failure(NotFound("no user bob")), "u") == "no user bob"
    assert cli.explain(Failure(BrokenPipeError()), "u") is None  # quiet_broken_pipe's
