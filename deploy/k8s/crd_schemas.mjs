// Validates Prometheus Operator objects (ServiceMonitor, PrometheusRule) against the CRD
// schemas bundled in the npm package @kubernetes-models/prometheus-operator, offline.
// Called by validate.py: argv[2] is the package's directory; stdin is a JSON array of
// objects; prints a JSON array of {index, field, message}, one per problem found.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const packageDir = process.argv[2];
const kinds = {};
for (const kind of ["ServiceMonitor", "PrometheusRule"]) {
  const file = join(packageDir, "monitoring.coreos.com", "v1", `${kind}.js`);
  kinds[kind] = (await import(pathToFileURL(file).href))[kind];
}

const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
objects.forEach((object, index) => {
  const Model = kinds[object.kind];
  if (!Model) {
    problems.push({ index, field: "kind", message: `no schema for ${object.kind}` });
    return;
  }
  try {
    new Model(object).validate();
  } catch (e) {
    // The validator's errors read "data/spec/endpoints/0/interval must match …".
    for (const line of String(e.message).split(/,\s*(?=data\/)/)) {
      const match = /^data\/?(\S*) (.*)$/.exec(line.trim());
      const field = match ? match[1].replaceAll("/", ".") || "(object)" : "(object)";
      problems.push({ index, field, message: match ? match[2] : line });
    }
  }
});
console.log(JSON.stringify(problems));
