"""Every entry point that takes a model name refuses a bad one with a 400 that
says why, before any lookup (issue 18's probe: ``evil%0A`` was accepted)."""

from types import SimpleNamespace

import pytest

from agent.compute.models import bad_name
from agent.runtime.node import Node, SubmitError
from agent.serve.oip import InferenceService
from agent.serve.oip_codec import InferRequest, OipError

BAD = ["evil\n", "../etc", "", "A", "x" * 65, "sat/0", " digits", "digits\x00"]


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_named_as_such(name):
    assert "use 1–64 of a-z" in bad_name(name)


def test_good_names_pass():
    assert bad_name("digits") is None and bad_name("my-model_v2.1") is None and bad_name(7) is not None


@pytest.mark.parametrize("name", BAD[:2] + BAD[3:])
async def test_a_task_with_a_bad_model_name_is_a_400(name):
    with pytest.raises(SubmitError) as err:
        await Node.submit(SimpleNamespace(), name, {}, None)
    assert err.value.status == 400 and "model name" in str(err.value)


@pytest.mark.parametrize("name", BAD[:3])
async def test_every_kserve_operation_refuses_a_bad_model_name_with_400(name):
    service = InferenceService(SimpleNamespace(store=SimpleNamespace(has=lambda n, sha=None: True)))
    calls = [lambda: service.check_known(name), lambda: service.model_ready(name), lambda: service.unload(name)]
    for call in calls:
        with pytest.raises(OipError) as err:
            call()
        assert err.value.status == 400 and "model name" in str(err.value)
    for coro in (service.model_metadata(name), service.model_config(name), service.load(name),
                 service.infer(name, "", InferRequest())):
        with pytest.raises(OipError) as err:
            await coro
        assert err.value.status == 400
