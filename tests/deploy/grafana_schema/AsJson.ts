// Grafana's types spell fixed strings as enums; a dashboard's JSON holds their values.
export type AsJson<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? readonly AsJson<U>[]
    : T extends object
      ? { readonly [K in keyof T]: AsJson<T[K]> }
      : T;
