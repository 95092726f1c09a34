// Proxyless gRPC in Node through xDS (@grpc/grpc-js-xds): resolves
// `xds:///TARGET` with the bootstrap in GRPC_XDS_BOOTSTRAP, makes N calls to
// /demo.Echo/Say and prints a JSON object counting the x-backend-version of
// the answers. Stops at the first error, which it counts.
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const [target, calls] = [process.argv[2], Number(process.argv[3])];
const client = new grpc.Client(`xds:///${target}`, grpc.credentials.createInsecure());
const identity = (b) => b;

function say() {
  return new Promise((resolve) => {
    let version = '?';
    const deadline = new Date(Date.now() + 15000);
    const call = client.makeUnaryRequest('/demo.Echo/Say', identity, identity, Buffer.from('hi'), new grpc.Metadata(),
      { deadline, waitForReady: true }, (err) => resolve(err ? `error ${err.code}: ${err.details}` : version));
    call.on('metadata', (md) => { version = String(md.get('x-backend-version')[0] ?? '?'); });
  });
}

(async () => {
  const counts = {};
  for (let i = 0; i < calls; i++) {
    const key = await say();
    counts[key] = (counts[key] ?? 0) + 1;
    if (key.startsWith('error')) break;
  }
  console.log(JSON.stringify(counts));
  client.close();
  process.exit(0);
})();
