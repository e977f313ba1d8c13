import sys, yaml, json
def load(p):
    return {(d['kind'], d['metadata'].get('namespace',''), d['metadata']['name']): d for d in yaml.safe_load_all(open(p)) if d}
a, b = load(sys.argv[1]), load(sys.argv[2])
print("only in", sys.argv[1], sorted(set(a)-set(b)))
print("only in", sys.argv[2], sorted(set(b)-set(a)))
for k in sorted(set(a)&set(b)):
    if a[k] != b[k]:
        print("DIFF", k); print(json.dumps(a[k], sort_keys=True)); print(json.dumps(b[k], sort_keys=True))
    else:
        print("same", k)
