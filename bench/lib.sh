# Shared by the bench scripts (source it).

# write_section PREFIX TEXT: replaces the section of docs/BENCHMARKS.md whose
# heading starts with "## PREFIX" by TEXT, or appends TEXT; other sections
# are kept.
write_section() {
    touch docs/BENCHMARKS.md
    python3 - "$1" "$2" <<'PY'
import re, sys
p = 'docs/BENCHMARKS.md'
s = open(p).read()
if not s.startswith('# Benchmarks'):
    s = '# Benchmarks\n\n' + s
sec = sys.argv[2].rstrip() + '\n'
pat = re.compile(r'^## ' + re.escape(sys.argv[1]) + r'.*?(?=^## |\Z)', re.S | re.M)
s = pat.sub(lambda m: sec + '\n', s) if pat.search(s) else s.rstrip() + '\n\n' + sec
open(p, 'w').write(s)
PY
}
