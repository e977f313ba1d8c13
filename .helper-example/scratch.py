# Rewrites a render for a dry run in a scratch namespace, with the BackupPolicy kind under a scratch group.
import sys, yaml
ns, group = sys.argv[2], sys.argv[3]
out = []
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d or d['kind'] == 'Namespace':
        continue
    if d['kind'] == 'CustomResourceDefinition':
        continue
    if 'namespace' in d['metadata']:
        d['metadata']['namespace'] = ns
    if d['kind'] == 'ClusterRoleBinding':
        for s in d['subjects']: s['namespace'] = ns
    if d['apiVersion'] == 'shop.example.com/v1':
        d['apiVersion'] = group + '/v1'
    out.append(d)
yaml.safe_dump_all(out, open(sys.argv[4], 'w'), sort_keys=False)
