# A JUnit document as a CI viewer reads it (Python's ElementTree): counts
# agree with the testcases, skips and failures carry messages. Prints one
# "suite-name cases" line per testsuite.
import sys, xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
assert root.tag == "testsuites", root.tag
total = 0
for s in root.findall("testsuite"):
    cases = s.findall("testcase")
    total += len(cases)
    assert int(s.get("tests")) == len(cases), s.get("name")
    count = lambda tag: sum(1 for c in cases if c.find(tag) is not None)
    assert int(s.get("skipped")) == count("skipped"), s.get("name")
    assert int(s.get("failures")) == count("failure"), s.get("name")
    assert int(s.get("errors")) == count("error"), s.get("name")
    for c in cases:
        assert c.get("name") and c.get("classname", "").startswith("cowgup."), c.attrib
        float(c.get("time"))
        for tag in ("skipped", "failure", "error"):
            k = c.find(tag)
            assert k is None or k.get("message"), (c.get("name"), tag)
    print(s.get("name"), len(cases))
assert int(root.get("tests")) == total
