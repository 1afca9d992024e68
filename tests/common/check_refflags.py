#!/usr/bin/python3
"""Compare the flag tables of common/refflags.c with the reference's argparse
calls (main_swav.py, eval_linear.py, eval_semisup.py): the same flags, types,
list-ness and defaults.  Usage: check_refflags.py TEST_REFFLAGS_EXE REF_DIR.
Exits 77 (skipped) when the reference is not at hand (CI); test_refflags
holds a hand transcript for that case."""
import ast
import json
import os
import subprocess
import sys


def reference_flags(path):
    tree = ast.parse(open(path).read(), path)
    flags = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args):
            continue
        name = ast.literal_eval(node.args[0])
        if not name.startswith("--"):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        typ = kw["type"].id if "type" in kw and isinstance(kw["type"], ast.Name) else "str"
        default = ast.literal_eval(kw["default"]) if "default" in kw else None
        nargs = ast.literal_eval(kw["nargs"]) if "nargs" in kw else None
        flags[name[2:]] = (typ, nargs, default)
    return flags


def main():
    exe, ref = sys.argv[1], sys.argv[2]
    if not os.path.isfile(os.path.join(ref, "main_swav.py")):
        print(f"reference not found in {ref}: skipped")
        return 77
    out = subprocess.run([exe, "--dump"], check=True, capture_output=True, text=True).stdout
    want_type = {"int": "int", "float": "float", "str": "str", "bool_flag": "bool"}
    errors = 0
    for line in out.splitlines():
        script, defaults, types = line.split("\t")
        defaults, types = json.loads(defaults), json.loads(types)
        ref_flags = reference_flags(os.path.join(ref, script))
        for name in sorted(set(ref_flags) | set(types)):
            if name not in types:
                print(f"{script}: --{name} missing from the table"); errors += 1; continue
            if name not in ref_flags:
                print(f"{script}: --{name} is not a reference flag"); errors += 1; continue
            typ, nargs, rdef = ref_flags[name]
            t = want_type.get(typ, "?") + ("_list" if nargs == "+" else "")
            if types[name] != t:
                print(f"{script}: --{name} is {types[name]}, reference {t}"); errors += 1
            ours = defaults[name]
            same = (list(map(float, ours)) == list(map(float, rdef)) if nargs == "+"
                    else ours == rdef if typ in ("str", "bool_flag")
                    else float(ours) == float(rdef))
            if not same:
                print(f"{script}: --{name} default {ours!r}, reference {rdef!r}"); errors += 1
        print(f"{script}: {len(ref_flags)} reference flags compared")
    print(f"{errors} differences")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
