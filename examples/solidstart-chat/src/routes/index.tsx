import { clientOnly } from "@solidjs/start";
import { createAsync, useLocation, useSubmission } from "@solidjs/router";
import { Show } from "solid-js";
import { getMe, signIn, signOut } from "~/lib/api";

// the chat holds a WebSocket: rendered in the browser only
const Chat = clientOnly(() => import("~/components/Chat"));

export const route = { preload: () => getMe() };

export default function Home() {
  const me = createAsync(() => getMe());
  const signingIn = useSubmission(signIn);
  const location = useLocation();
  return (
    <main class="page">
      <Show
        when={me()}
        fallback={
          <form action={signIn} method="post" class="sign-in" data-testid="sign-in">
            <h1>roomcast × SolidStart</h1>
            <label>
              your name <input name="name" autocomplete="username" required data-testid="sign-in-name" />
            </label>
            <input type="hidden" name="search" value={location.search} />
            <button type="submit" data-testid="sign-in-submit">Sign in</button>
            <Show when={signingIn.result?.error}>{(e) => <p class="error">{e()}</p>}</Show>
          </form>
        }
      >
        {(m) => (
          <>
            <header>
              <h1>roomcast × SolidStart</h1>
              <span data-testid="me">{m().user}</span>
              <Show when={m().staff}>
                <small> (staff)</small>
              </Show>
              <form action={signOut} method="post">
                <button type="submit">Sign out</button>
              </form>
            </header>
            <Chat user={m().user} staff={m().staff} gateways={m().gateways} />
          </>
        )}
      </Show>
    </main>
  );
}
