"""Evaluates a ValidatingAdmissionPolicy on AdmissionRequests the way the API server does,
with an independent CEL implementation (cel-python), for tests that have no kube-apiserver.

stdin: {"policy": <ValidatingAdmissionPolicy>, "requests": [<AdmissionRequest>...]}
(an AdmissionRequest may carry "object" and "oldObject")
stdout: one verdict per request: {"matched": bool, "allowed": bool, "why": str}

Rules followed (admissionregistration.k8s.io/v1): a request is judged only if it matches
spec.matchConstraints.resourceRules (group, resource or resource/subresource, operation) and
every matchCondition is true; then every validation must be true. An expression that fails to
evaluate applies spec.failurePolicy (Fail: the request is refused).
"""
import json
import sys

import celpy


def compile_all(env, exprs):
    return [env.program(env.compile(e)) for e in exprs]


def evaluate(prog, request):
    # The API server binds `object` and `oldObject` (null where the operation has none).
    activation = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(request.get("object")),
        "oldObject": celpy.json_to_cel(request.get("oldObject")),
    }
    try:
        return bool(prog.evaluate(activation)), None
    except Exception as e:  # celpy raises CELEvalError and friends
        return None, f"{type(e).__name__}: {e}"


def rule_matches(rules, request):
    res = request["resource"]
    name = res["resource"] + ("/" + request["subResource"] if request.get("subResource") else "")
    for r in rules:
        if (res["group"] in r["apiGroups"] or "*" in r["apiGroups"]) and (
            name in r["resources"] or "*" in r["resources"]
        ) and (request["operation"] in r["operations"] or "*" in r["operations"]):
            return True
    return False


def main():
    doc = json.load(sys.stdin)
    spec = doc["policy"]["spec"]
    env = celpy.Environment()
    fail_closed = spec.get("failurePolicy", "Fail") == "Fail"
    conditions = compile_all(env, [c["expression"] for c in spec.get("matchConditions", [])])
    validations = compile_all(env, [v["expression"] for v in spec["validations"]])
    out = []
    for req in doc["requests"]:
        if not rule_matches(spec["matchConstraints"]["resourceRules"], req):
            out.append({"matched": False, "allowed": True, "why": "no resource rule matches"})
            continue
        verdict = None
        for c in conditions:
            ok, err = evaluate(c, req)
            if err is not None:
                verdict = {"matched": True, "allowed": not fail_closed, "why": "matchCondition: " + err}
                break
            if not ok:
                verdict = {"matched": False, "allowed": True, "why": "a matchCondition is false"}
                break
        if verdict is None:
            verdict = {"matched": True, "allowed": True, "why": "every validation holds"}
            for v in validations:
                ok, err = evaluate(v, req)
                if err is not None:
                    verdict = {"matched": True, "allowed": not fail_closed, "why": "validation: " + err}
                    break
                if not ok:
                    verdict = {"matched": True, "allowed": False, "why": "a validation is false"}
                    break
        out.append(verdict)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
