// Type-checked by the test command (tsc --noEmit): the declarations describe how the package is used.
import { Herald, HeraldError, type Joined } from "../herald-client.js";

const herald = new Herald("ws://127.0.0.1:7777/connect", { token: async () => "jwt", pingInterval: 20_000 });
const off = herald.on("disconnected", ({ code, reason, reconnect }) => console.log(code, reason, reconnect));
herald.on("recovery", (result: Joined) => {
  if (!result.recovered) console.log(`reload ${result.room}`);
});
herald.on("error", (error: HeraldError) => console.log(error.code, error.room));
const joined: Promise<Joined> = herald.join("lobby", (items, { offset, epoch }) => console.log(items, offset, epoch), {
  since: { offset: 3, epoch: "e" },
});
joined.then(({ recovered }) => console.log(recovered));
herald.leave("lobby").then(() => off());
herald.close();
