import { clientOnly } from "@solidjs/start";
import { createAsync, useLocation, useSubmission } from "@solidjs/router";
import { createSignal, onMount, Show } from "solid-js";
import { getMe, signIn, signOut } from "~/lib/api";

// the chat holds a WebSocket: rendered in the browser only
const Chat = clientOnly(() => import("~/components/Chat"));

export const route = { preload: () => getMe() };

export default function Home() {
  const me = createAsync(() => getMe());
  const signingIn = useSubmission(signIn);
  const location = useLocation();
  // set once the page is hydrated (the e2e test waits for it before it types)
  const [ready, setReady] = createSignal(false);
  onMount(() => setReady(true));
  return (
    <main class="page">
      {/* keyed on the user name: a refetch of getMe() that names the same user keeps the chat
          (and its WebSocket) as it is, and nothing below reads a stale accessor */}
      <Show
        when={me()?.user}
        keyed
        fallback={
          <form action={signIn} method="post" class="sign-in" data-testid="sign-in" data-ready={ready() ? "1" : undefined}>
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
        {(user) => {
          const m = me()!;
          return (
            <>
              <header>
                <h1>roomcast × SolidStart</h1>
                <span data-testid="me" data-user={user}>{m.name}</span>
                <Show when={m.staff}>
                  <small> (staff)</small>
                </Show>
                <form action={signOut} method="post">
                  <button type="submit">Sign out</button>
                </form>
              </header>
              <Chat user={user} staff={m.staff} gateways={m.gateways} />
            </>
          );
        }}
      </Show>
    </main>
  );
}
