// SPDX-License-Identifier: MIT
// Chat templates: the evaluator. Statement and expression trees -> output, under the render's recursion and iteration limits.
#include "text/jinja/internal.h"

#include "base/unicode.h"

#include <climits>
#include <cmath>

namespace together::jinja::detail {

// Limits of one render (see RenderBudget): recursion on the stack and work done.
constexpr int kMaxCallDepth = 64;           // macro calls inside macro calls
constexpr int kMaxEvalDepth = 2000;         // expression and statement evaluation on the stack at once
constexpr int64_t kMaxIterations = 1000000; // loop iterations of one render, all loops together

void chargeIterations(int64_t n)
{
    if (t_budget && (t_budget->iterations += n) > kMaxIterations)
        limitError("loops ran more than " + std::to_string(kMaxIterations) +
                   " iterations (the limit; macro calls and the comparisons of unique count too)");
}

DepthGuard::DepthGuard(bool call)
    : m_call(call)
{
    if (!t_budget)
        return;
    if (++t_budget->evalDepth > kMaxEvalDepth) {
        --t_budget->evalDepth;
        limitError("evaluation nested deeper than " + std::to_string(kMaxEvalDepth) + " levels");
    }
    if (m_call && ++t_budget->callDepth > kMaxCallDepth) {
        --t_budget->callDepth;
        --t_budget->evalDepth;
        limitError("macros called each other deeper than " + std::to_string(kMaxCallDepth) + " levels (runaway recursion?)");
    }
}

DepthGuard::~DepthGuard()
{
    if (!t_budget)
        return;
    --t_budget->evalDepth;
    if (m_call)
        --t_budget->callDepth;
}

[[noreturn]] void runtimeError(int line, const std::string& msg)
{
    throw Error("chat template line " + std::to_string(line) + ": " + msg);
}

void checkOverflow(bool overflow, int line)
{
    if (overflow)
        runtimeError(line, "integer result does not fit in 64 bits");
}

int64_t floatToInt(double d, int line)
{
    // 2^63 is exactly representable; anything at or beyond it (or NaN) has no int64_t.
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
        runtimeError(line, "number " + formatFloat(d) + " cannot be made an integer");
    return static_cast<int64_t>(d);
}

Array iterate(const Value& v, int line)
{
    if (v.isArray()) {
        chargeVisits(static_cast<int64_t>(v.arr().size())); // filters and loops over a list, however often
        return v.arr();
    }
    if (v.isObject()) {
        Array keys;
        for (auto& [k, x] : v.obj().items)
            keys.push_back(Value(k));
        return keys;
    }
    if (v.isString()) {
        // One item per character, held to the limits of a list of as many items before any is built.
        const std::string& text = v.str().s;
        const size_t n = unicode::countCodepoints(text);
        if (n > kMaxItems)
            limitError("iterating a string of " + std::to_string(n) + " characters would make as many items, over the limit of " +
                       std::to_string(kMaxItems) + " of a list");
        chargeVisits(static_cast<int64_t>(n));
        const bool marked = v.str().anyMarked();
        Array chars;
        chars.reserve(n);
        for (size_t i = 0; i < text.size();) {
            const size_t end = unicode::nextCodepoint(text, i);
            chars.push_back(Str::derived(text.substr(i, end - i), marked));
            i = end;
        }
        return chars;
    }
    if (v.isUndefined() || v.isNone())
        return {};
    runtimeError(line, "value is not iterable");
}

Value Evaluator::getAttr(const Value& obj, const std::string& name, int line)
{
    if (obj.isObject()) {
        Object& o = obj.obj();
        if (auto* v = o.find(name))
            return *v;
        if (o.isNamespace)
            return Value();
        if (name == "items" || name == "keys" || name == "values") {
            auto self = std::get<std::shared_ptr<Object>>(obj.v);
            return makeFn([self, name](const Args&) -> Value {
                Array out;
                for (auto& [k, v] : self->items) {
                    if (name == "items")
                        out.push_back(makeArray({Value(k), v}));
                    else if (name == "keys")
                        out.push_back(Value(k));
                    else
                        out.push_back(v);
                }
                return makeArray(std::move(out));
            });
        }
        if (name == "get") {
            auto self = std::get<std::shared_ptr<Object>>(obj.v);
            return makeFn([self](const Args& a) -> Value {
                if (a.positional.empty())
                    return Value();
                if (auto* v = self->find(toStr(a.positional[0]).s))
                    return *v;
                return a.positional.size() > 1 ? a.positional[1] : Value(None{});
            });
        }
        return Value();
    }
    if (obj.isString())
        return stringMethod(obj, name, line);
    if (obj.isArray()) {
        if (name == "append") {
            auto self = std::get<std::shared_ptr<Array>>(obj.v);
            return makeFn([self, line](const Args& a) -> Value {
                for (auto& x : a.positional) {
                    if (reaches(x, self.get()))
                        runtimeError(line, "a list cannot contain itself");
                    checkItems(self->size() + 1);
                    self->push_back(x);
                }
                return Value(None{});
            });
        }
        // numeric attribute access (x.0) is an index
        if (!name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) {
            errno = 0;
            const long long i = std::strtoll(name.c_str(), nullptr, 10);
            if (errno == ERANGE)
                runtimeError(line, "index " + name + " does not fit in 64 bits");
            return getIndex(obj, Value(static_cast<int64_t>(i)), line);
        }
        return Value();
    }
    return Value(); // undefined.attr stays undefined, as HF's renderers treat missing fields
}

Value Evaluator::getIndex(const Value& obj, const Value& key, int line)
{
    if (obj.isArray()) {
        if (!key.isInt())
            runtimeError(line, "list index must be an integer");
        int64_t i = key.integer(), n = static_cast<int64_t>(obj.arr().size());
        if (i < 0)
            i += n;
        if (i < 0 || i >= n)
            return Value();
        return obj.arr()[static_cast<size_t>(i)];
    }
    if (obj.isObject()) {
        if (auto* v = obj.obj().find(toStr(key).s))
            return *v;
        return Value();
    }
    if (obj.isString()) {
        if (!key.isInt())
            runtimeError(line, "string index must be an integer");
        // Walked, not split: a string can be 8 MiB, and a template can index it in a loop.
        const std::string& text = obj.str().s;
        int64_t i = key.integer();
        if (i < 0)
            i += static_cast<int64_t>(unicode::countCodepoints(text));
        if (i < 0)
            return Value();
        const size_t byte = unicode::codepointOffset(text, static_cast<size_t>(i));
        if (byte >= text.size())
            return Value();
        return Value(obj.str().sub(byte, unicode::nextCodepoint(text, byte) - byte));
    }
    return Value();
}

Value Evaluator::eval(const Expr& e, Scope& scope)
{
    const DepthGuard depth;
    switch (e.kind) {
    case Expr::Literal:
        return e.literal;
    case Expr::Var:
        return scope.lookup(e.name);
    case Expr::ListLit:
        return evalList(e, scope);
    case Expr::DictLit:
        return evalDict(e, scope);
    case Expr::Attr:
        return evalAttr(e, scope);
    case Expr::Index:
        return evalIndex(e, scope);
    case Expr::Slice:
        return evalSlice(e, scope);
    case Expr::Call:
        return evalCall(e, scope);
    case Expr::Filter:
        return callFilter(e, scope);
    case Expr::Test:
        return runTest(e, scope);
    case Expr::Unary:
        return evalUnary(e, scope);
    case Expr::Ternary:
        return evalTernary(e, scope);
    case Expr::Binary:
        return evalBinary(e, scope);
    }
    runtimeError(e.line, "bad expression");
}

Value Evaluator::evalList(const Expr& e, Scope& scope)
{
    Array a;
    for (auto& k : e.kids)
        a.push_back(eval(*k, scope));
    return makeArray(std::move(a));
}

Value Evaluator::evalDict(const Expr& e, Scope& scope)
{
    Value o = makeObject();
    for (size_t i = 0; i + 1 < e.kids.size(); i += 2)
        o.obj().set(toStr(eval(*e.kids[i], scope)).s, eval(*e.kids[i + 1], scope));
    return o;
}

Value Evaluator::evalAttr(const Expr& e, Scope& scope)
{
    return getAttr(eval(*e.kids[0], scope), e.name, e.line);
}

Value Evaluator::evalIndex(const Expr& e, Scope& scope)
{
    return getIndex(eval(*e.kids[0], scope), eval(*e.kids[1], scope), e.line);
}

Value Evaluator::evalSlice(const Expr& e, Scope& scope)
{
    Value base = eval(*e.kids[0], scope);
    auto part = [&](int k) -> std::optional<int64_t> {
        if (!e.kids[static_cast<size_t>(k)])
            return std::nullopt;
        Value v = eval(*e.kids[static_cast<size_t>(k)], scope);
        if (v.isNone())
            return std::nullopt;
        if (!v.isInt())
            runtimeError(e.line, "slice bounds must be integers");
        return v.integer();
    };
    auto start = part(1), stop = part(2), step = part(3);
    int64_t st = step.value_or(1);
    if (st == 0)
        runtimeError(e.line, "slice step cannot be zero");
    std::vector<size_t> starts; // for strings: each code point's byte offset, and the end
    int64_t n;
    if (base.isArray())
        n = static_cast<int64_t>(base.arr().size());
    else if (base.isString()) {
        const std::string& text = base.str().s;
        for (size_t i = 0; i < text.size(); i = unicode::nextCodepoint(text, i))
            starts.push_back(i);
        n = static_cast<int64_t>(starts.size());
        starts.push_back(text.size());
    } else if (base.isUndefined() || base.isNone())
        return Value();
    else
        runtimeError(e.line, "value cannot be sliced");
    auto clamp = [&](std::optional<int64_t> v, int64_t def) {
        if (!v)
            return def;
        int64_t x = *v < 0 ? *v + n : *v;
        if (st > 0)
            return std::clamp<int64_t>(x, 0, n);
        return std::clamp<int64_t>(x, -1, n - 1);
    };
    int64_t b = clamp(start, st > 0 ? 0 : n - 1), en = clamp(stop, st > 0 ? n : -1);
    std::vector<int64_t> idx;
    for (int64_t i = b; st > 0 ? i < en : i > en;) {
        idx.push_back(i);
        if (__builtin_add_overflow(i, st, &i))
            break; // a step beyond the end (x[::2**62])
    }
    if (base.isArray()) {
        Array out;
        for (auto i : idx)
            out.push_back(base.arr()[static_cast<size_t>(i)]);
        return makeArray(std::move(out));
    }
    Str out;
    for (auto i : idx)
        out.append(base.str().sub(starts[static_cast<size_t>(i)], starts[static_cast<size_t>(i) + 1] - starts[static_cast<size_t>(i)]));
    return Value(out);
}

Value Evaluator::evalCall(const Expr& e, Scope& scope)
{
    Value f = eval(*e.kids[0], scope);
    if (!f.isCallable()) {
        std::string what = e.kids[0]->kind == Expr::Var ? "'" + e.kids[0]->name + "'"
                           : e.kids[0]->kind == Expr::Attr ? "method '" + e.kids[0]->name + "'"
                                                           : "value";
        runtimeError(e.line, what + " is not callable (unknown function or method)");
    }
    return f.fn().call(evalArgs(e, scope));
}

Value Evaluator::evalTernary(const Expr& e, Scope& scope)
{
    if (truthy(eval(*e.kids[0], scope)))
        return eval(*e.kids[1], scope);
    return e.kids[2] ? eval(*e.kids[2], scope) : Value();
}

Value Evaluator::evalUnary(const Expr& e, Scope& scope)
{
    Value v = eval(*e.kids[0], scope);
    if (e.name == "not")
        return Value(!truthy(v));
    if (!v.isNumber())
        runtimeError(e.line, "unary " + e.name + " needs a number");
    if (e.name == "-") {
        if (!v.isInt())
            return Value(-v.num());
        if (v.integer() == INT64_MIN)
            runtimeError(e.line, "integer result does not fit in 64 bits");
        return Value(-v.integer());
    }
    return v;
}

namespace {

// `item in container`: a substring of a string, an item of a list, a key of a mapping; nothing is in undefined
// or none.
bool contains(const Value& container, const Value& item, int line)
{
    bool found = false;
    if (container.isString()) {
        if (!item.isString())
            runtimeError(line, "'in <string>' needs a string on the left");
        found = Finder(item.str().s).find(container.str().s) != std::string::npos;
    } else if (container.isArray()) {
        for (auto& x : container.arr())
            found = found || equals(item, x);
    } else if (container.isObject()) {
        found = container.obj().find(toStr(item).s) != nullptr;
    } else if (!container.isUndefined() && !container.isNone()) {
        runtimeError(line, "'in' needs a string, list or mapping on the right");
    }
    return found;
}

// `s * n` (either way round), refused before it is built when it would be over the string limit.
Value repeat(const Value& a, const Value& b)
{
    const Value& s = a.isString() ? a : b;
    int64_t n = a.isInt() ? a.integer() : b.integer();
    // Checked before building: 'x' * 10**12 is refused at once, not after filling memory ('' * 10**18
    // is '' at once, not 10**18 empty appends).
    if (s.str().s.empty() || n <= 0)
        return Value(Str{});
    if (static_cast<uint64_t>(n) > kMaxStringBytes / s.str().s.size())
        checkStringSize(kMaxStringBytes + 1);
    Str out;
    for (int64_t i = 0; i < n; ++i)
        out.append(s.str());
    return Value(out);
}

// The arithmetic operators on two numbers: integers stay exact (Python's floor division and modulo, an error
// where the result would not fit in 64 bits), any float makes the result a float.
Value arithmetic(const std::string& op, const Value& a, const Value& b, int line)
{
    bool ints = a.isInt() && b.isInt();
    int64_t r = 0;
    if (op == "+" || op == "-" || op == "*") {
        if (!ints)
            return Value(op == "+" ? a.num() + b.num() : op == "-" ? a.num() - b.num() : a.num() * b.num());
        const bool overflow = op == "+"   ? __builtin_add_overflow(a.integer(), b.integer(), &r)
                              : op == "-" ? __builtin_sub_overflow(a.integer(), b.integer(), &r)
                                          : __builtin_mul_overflow(a.integer(), b.integer(), &r);
        checkOverflow(overflow, line);
        return Value(r);
    }
    if (op == "/") {
        if (b.num() == 0)
            runtimeError(line, "division by zero");
        return Value(a.num() / b.num());
    }
    if (op == "//" || op == "%") {
        if (b.num() == 0)
            runtimeError(line, "division by zero");
        if (ints) {
            if (a.integer() == INT64_MIN && b.integer() == -1) {
                if (op == "//") // -INT64_MIN does not fit; the remainder is 0
                    runtimeError(line, "integer result does not fit in 64 bits");
                return Value(int64_t(0));
            }
            int64_t q = a.integer() / b.integer();
            r = a.integer() % b.integer();
            if (r != 0 && ((r < 0) != (b.integer() < 0))) {
                --q;
                r += b.integer();
            }
            return op == "//" ? Value(q) : Value(r);
        }
        double q = std::floor(a.num() / b.num());
        return op == "//" ? Value(q) : Value(a.num() - q * b.num());
    }
    if (op == "**") {
        if (!ints || b.integer() < 0)
            return Value(std::pow(a.num(), b.num()));
        // Exact, by squaring, with every product checked.
        int64_t base = a.integer(), exp = b.integer(), acc = 1;
        while (exp > 0) {
            if (exp & 1)
                checkOverflow(__builtin_mul_overflow(acc, base, &acc), line);
            exp >>= 1;
            if (exp > 0)
                checkOverflow(__builtin_mul_overflow(base, base, &base), line);
        }
        return Value(acc);
    }
    runtimeError(line, "unknown operator " + op);
}

// `a op b` once both sides are evaluated: first what strings, lists and mappings define, then arithmetic.
// Not inlined: its locals stay out of evalBinary's frame, which is on the stack once per level of nesting.
[[gnu::noinline]] Value binaryOp(const std::string& op, const Value& a, const Value& b, int line)
{
    if (op == "~") {
        Str s = toStr(a);
        s.append(toStr(b));
        return Value(s);
    }
    if (op == "==")
        return Value(equals(a, b));
    if (op == "!=")
        return Value(!equals(a, b));
    if (op == "in" || op == "not in") {
        const bool found = contains(b, a, line);
        return Value(op == "in" ? found : !found);
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
        int cmp;
        if (a.isNumber() && b.isNumber())
            cmp = a.num() < b.num() ? -1 : a.num() > b.num() ? 1 : 0;
        else if (a.isString() && b.isString())
            cmp = a.str().s.compare(b.str().s);
        else
            runtimeError(line, "cannot compare these values with " + op);
        bool r = op == "<" ? cmp < 0 : op == ">" ? cmp > 0 : op == "<=" ? cmp <= 0 : cmp >= 0;
        return Value(r);
    }
    if (op == "+") {
        if (a.isString() && b.isString()) {
            Str s = a.str();
            s.append(b.str());
            return Value(s);
        }
        if (a.isArray() && b.isArray()) {
            Array out = a.arr();
            out.insert(out.end(), b.arr().begin(), b.arr().end());
            return makeArray(std::move(out));
        }
    }
    if (op == "*" && ((a.isString() && b.isInt()) || (a.isInt() && b.isString())))
        return repeat(a, b);
    if (!a.isNumber() || !b.isNumber())
        runtimeError(line, "operator " + op + " needs numbers (got " + pyRepr(a, true) + " and " + pyRepr(b, true) + ")");
    return arithmetic(op, a, b, line);
}

} // namespace

Value Evaluator::evalBinary(const Expr& e, Scope& scope)
{
    const std::string& op = e.name;
    // `and` and `or` evaluate their right side only when the left one does not decide.
    if (op == "and") {
        Value a = eval(*e.kids[0], scope);
        return truthy(a) ? eval(*e.kids[1], scope) : a;
    }
    if (op == "or") {
        Value a = eval(*e.kids[0], scope);
        return truthy(a) ? a : eval(*e.kids[1], scope);
    }
    Value a = eval(*e.kids[0], scope), b = eval(*e.kids[1], scope);
    return binaryOp(op, a, b, e.line);
}

void Evaluator::execNode(const Node& n, Scope& scope)
{
    const DepthGuard depth;
    switch (n.kind) {
    case Node::Text:
        m_out.append(Str{n.text, {}});
        return;
    case Node::Output:
        execOutput(n, scope);
        return;
    case Node::If:
        execIf(n, scope);
        return;
    case Node::For:
        execFor(n, scope);
        return;
    case Node::Set:
        execSet(n, scope);
        return;
    case Node::SetBlock:
        execSetBlock(n, scope);
        return;
    case Node::Macro:
        execMacro(n, scope);
        return;
    case Node::Break:
        throw BreakSignal{};
    case Node::Continue:
        throw ContinueSignal{};
    case Node::CallBlock:
        exec(n.body, scope);
        return;
    }
}

void Evaluator::execOutput(const Node& n, Scope& scope)
{
    Value v = eval(*n.expr, scope);
    m_out.append(toStr(v));
}

void Evaluator::execIf(const Node& n, Scope& scope)
{
    for (auto& [cond, body] : n.branches) {
        if (!cond || truthy(eval(*cond, scope))) {
            exec(body, scope);
            return;
        }
    }
}

namespace {

// The `loop` variable of iteration i over `items`. Not inlined: its locals stay out of execFor's frame, which is
// on the stack once per level of nesting.
[[gnu::noinline]] Value loopObject(const Array& items, int64_t i)
{
    const int64_t len = static_cast<int64_t>(items.size());
    Value loop = makeObject();
    Object& lo = loop.obj();
    lo.set("index", Value(i + 1));
    lo.set("index0", Value(i));
    lo.set("revindex", Value(len - i));
    lo.set("revindex0", Value(len - i - 1));
    lo.set("first", Value(i == 0));
    lo.set("last", Value(i == len - 1));
    lo.set("length", Value(len));
    lo.set("previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value());
    lo.set("nextitem", i + 1 < len ? items[static_cast<size_t>(i + 1)] : Value());
    lo.set("cycle", makeFn([i](const Args& a) -> Value {
               if (a.positional.empty())
                   return Value();
               return a.positional[static_cast<size_t>(i) % a.positional.size()];
           }));
    return loop;
}

} // namespace

// The items a for loop runs over: its iterable's, less those its `if` rejects.
Array Evaluator::loopItems(const Node& n, Scope& scope)
{
    Value iterable = eval(*n.expr, scope);
    Array all = iterate(iterable, n.line);
    chargeIterations(static_cast<int64_t>(all.size())); // items a loop's `if` skips cost a test each too
    Array items;
    // `for x in xs if cond`: filter first so that loop.index/length count only kept items
    for (auto& x : all) {
        if (n.filterCond) {
            Scope probe(&scope);
            if (n.targets.size() == 1)
                probe.set(n.targets[0], x);
            else if (x.isArray())
                for (size_t k = 0; k < n.targets.size() && k < x.arr().size(); ++k)
                    probe.set(n.targets[k], x.arr()[k]);
            if (!truthy(eval(*n.filterCond, probe)))
                continue;
        }
        items.push_back(x);
    }
    return items;
}

void Evaluator::execFor(const Node& n, Scope& scope)
{
    Array items = loopItems(n, scope);
    if (items.empty()) {
        exec(n.elseBody, scope);
        return;
    }
    const int64_t len = static_cast<int64_t>(items.size());
    // Jinja scoping: variables set inside a loop body do not leak out, except through namespaces.
    for (int64_t i = 0; i < len; ++i) {
        Scope inner(&scope);
        const Value& x = items[static_cast<size_t>(i)];
        if (n.targets.size() == 1) {
            inner.set(n.targets[0], x);
        } else {
            if (!x.isArray() || x.arr().size() != n.targets.size())
                runtimeError(n.line, "cannot unpack loop item into " + std::to_string(n.targets.size()) + " names");
            for (size_t k = 0; k < n.targets.size(); ++k)
                inner.set(n.targets[k], x.arr()[k]);
        }
        Value loop = loopObject(items, i);
        inner.set("loop", loop);
        try {
            exec(n.body, inner);
        } catch (const BreakSignal&) {
            break;
        } catch (const ContinueSignal&) {
            continue;
        }
    }
}

void Evaluator::execSet(const Node& n, Scope& scope)
{
    Value v = eval(*n.expr, scope);
    if (!n.attrTarget.empty()) {
        Value target = scope.lookup(n.targets[0]);
        if (!target.isObject() || !target.obj().isNamespace)
            runtimeError(n.line, "'" + n.targets[0] + "' is not a namespace; only namespace attributes can be set");
        if (reaches(v, &target.obj()))
            runtimeError(n.line, "a namespace cannot contain itself");
        target.obj().set(n.attrTarget, v);
        return;
    }
    if (n.targets.size() == 1) {
        scope.set(n.targets[0], v);
        return;
    }
    if (!v.isArray() || v.arr().size() != n.targets.size())
        runtimeError(n.line, "cannot unpack value into " + std::to_string(n.targets.size()) + " names");
    for (size_t k = 0; k < n.targets.size(); ++k)
        scope.set(n.targets[k], v.arr()[k]);
}

void Evaluator::execSetBlock(const Node& n, Scope& scope)
{
    Str captured;
    Evaluator sub(captured);
    sub.exec(n.body, scope);
    scope.set(n.targets[0], Value(captured));
}

void Evaluator::execMacro(const Node& n, Scope& scope)
{
    const Node* node = &n;
    std::shared_ptr<Scope> defScope = scope.snapshot();
    scope.set(n.targets[0], makeFn([node, defScope](const Args& a) -> Value {
                  const DepthGuard call(true);
                  chargeIterations(1); // calls count like iterations: f(f) twice per call is 2^depth calls
                  Scope local(defScope.get());
                  for (size_t k = 0; k < node->params.size(); ++k) {
                      const auto& [pname, def] = node->params[k];
                      if (const Value* v = a.get(k, pname))
                          local.set(pname, *v);
                      else if (def) {
                          Str dummy;
                          Evaluator ev(dummy);
                          local.set(pname, ev.eval(*def, local));
                      }
                  }
                  Str out;
                  Evaluator ev(out);
                  ev.exec(node->body, local);
                  return Value(out);
              }));
}

} // namespace together::jinja::detail
